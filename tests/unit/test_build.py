"""Unit tier for keys passed through to a library: checked against the signature of what they configure
(build.check_arguments), before any data or model loads, in one line naming the key."""

from __future__ import annotations

import pytest

from src import build
from src.config import CONF_DIR, validate
from src.errors import ConfigError
from tests.helpers import compose_cfg


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["+optim.optimizer.foo=1"],
            "optim.optimizer.foo=1: not an argument of torch.optim.AdamW; it takes lr, ",
        ),
        (
            ["optim=sgd", "+optim.optimizer.betas=[0.9,0.9]"],
            "optim.optimizer.betas=[0.9, 0.9]: not an argument of ",
        ),
        (
            ["method=lora", "+method.peft.rnak=3"],
            "method.peft.rnak=3: not an argument of peft.LoraConfig; it takes ",
        ),
        (
            ["lr_schedule=polynomial", "+lr_schedule.kwargs.powr=2"],
            "lr_schedule.kwargs.powr=2: not an argument of polynomial; it takes lr_end, power",
        ),
    ],
)
def test_an_unknown_library_argument_is_one_line(overrides, line):
    with pytest.raises(ConfigError) as info:
        build.check_arguments(validate(compose_cfg(*overrides)))
    assert str(info.value).startswith(line) and "\n" not in str(info.value), str(info.value)


SHIPPED = [
    f"{g}={p.stem}" for g in ("optim", "lr_schedule", "method") for p in sorted((CONF_DIR / g).glob("*.yaml"))
]


@pytest.mark.parametrize("choice", SHIPPED)
def test_every_shipped_choice_passes(choice):
    build.check_arguments(validate(compose_cfg(choice)))
