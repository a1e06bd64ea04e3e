from src.run import main

main()
