"""Reports that do not mislead (src/report/marks.py and what the record measures for it): bold only what is
distinguishable, timings taken on a busy machine marked †, extrapolated time/epoch marked ~, memory and
throughput axes from zero, labels that never overprint, on CPU the memory training added, eval-loss curves;
and the measurements behind them (callbacks.Conditions, trainer.session_metrics)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from src import callbacks, records, report
from src.report import figures, marks, plots
from tests.unit.test_report import CONTENTION, RANK_METRICS, config_for, current_code, md_table, write_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _frozen_code(monkeypatch):
    """This checkout's code key, asked once (see tests/unit/test_report.py)."""
    code = current_code()
    monkeypatch.setattr(records, "code_key", lambda: code)


@pytest.fixture
def drawn(monkeypatch):
    """Plots built but not rendered; the figures kept, to read their axes and lines."""
    figs: list = []
    monkeypatch.setattr(figures, "png", lambda fig: figs.append(fig) or PNG)
    return figs


def bold(md: str) -> dict[str, list[str]]:
    header, table = md_table(md)
    return {h: [r[0] for r in table if r[i].startswith("**")] for i, h in enumerate(header)}


def cells(md: str, column: str) -> list[str]:
    header, table = md_table(md)
    return [r[header.index(column)] for r in table]


def seeds_grid(root: Path, values: dict[int, list[float]], key: str = "eval_loss", extra=None) -> None:
    """rank -> one value of `key` per seed; `extra(rank, seed)` adds metrics to a run."""
    i = 0
    for rank, xs in values.items():
        for seed, x in enumerate(xs):
            m = {**RANK_METRICS[rank], key: x, **((extra or (lambda r, s: {}))(rank, seed))}
            write_run(
                root / str(i), [f"rank={rank}", f"seed={seed}"], m, config=config_for("lora", rank, seed)
            )
            i += 1


def write(root: Path, plots: bool = True) -> report.Report:
    """The report, compared with the code the records were written with (another engineer's edit to src/ while
    the tests run would otherwise make every run stale)."""
    return report.write_report(root, plots=plots, code=current_code())


def md_of(root: Path) -> str:
    write(root, plots=False)
    return (root / "report.md").read_text()


# --------------------------------------------------------------------------- bold


def test_replicates_bold_only_when_intervals_separate(tmp_path):
    apart = tmp_path / "apart"  # rank 4: 5.50 ± 0.01, rank 8: 5.80 ± 0.01: the intervals are far apart
    seeds_grid(apart, {4: [5.49, 5.50, 5.51], 8: [5.79, 5.80, 5.81]})
    md = md_of(apart)
    assert bold(md)["eval loss"] == ["4"]
    assert "only where it is distinguishable from seed noise: its row's 95% interval lies entirely" in md
    assert "**Single seed**" not in md

    close = tmp_path / "close"  # means differ, the intervals overlap: nothing bold
    seeds_grid(close, {4: [5.70, 5.74, 5.66], 8: [5.80, 5.90, 5.85]})
    assert bold(md_of(close))["eval loss"] == []

    higher = tmp_path / "higher"  # tokens/s: higher is better, the lower bound must clear the others' upper
    seeds_grid(higher, {4: [1500.0, 1510.0, 1490.0], 8: [1000.0, 1010.0, 990.0]}, key="tokens_per_s")
    assert bold(md_of(higher))["tokens/s"] == ["4"]


def test_a_row_of_one_run_among_replicates_bolds_nothing_measured(tmp_path):
    seeds_grid(tmp_path, {4: [5.49, 5.50, 5.51], 8: [5.9]})
    b = bold(md_of(tmp_path))
    assert b["eval loss"] == []
    assert b["trainable params"] == ["4"]  # exact sizes need no interval


def test_single_seed_marks_no_measured_value_best(tmp_path):
    for i, (rank, loss) in enumerate([(4, 1.3000), (8, 1.3015)]):  # the 0.0015 gap of 20 eval examples
        write_run(
            tmp_path / str(i),
            [f"rank={rank}"],
            {**RANK_METRICS[rank], "eval_loss": loss, "tokens_per_s": 1050.0 - 228 * i},
            config=config_for("lora", rank),
        )
    md = md_of(tmp_path)
    b = bold(md)
    assert b["eval loss"] == [] and b["tokens/s"] == [] and b["peak memory"] == []
    assert b["trainable params"] == ["4"] and b["checkpoint"] == ["4"]
    assert "**Single seed**: every row is one run" in md and "at most 0.0015 between rows" in md
    assert "`seed=0,1,2`" in md


def test_best_groups_rules():
    from src.report.columns import BY_KEY
    from src.report.stats import Stat

    def g(*xs, busy=False):
        run = SimpleNamespace(contention={**CONTENTION, "cpu_wait_share": 0.5 if busy else 0.0})
        st = Stat.of(list(xs))
        return SimpleNamespace(stat=lambda key: st, runs=[run])

    loss, rate, params = BY_KEY["eval_loss"], BY_KEY["tokens_per_s"], BY_KEY["trainable_params"]
    assert marks.best_groups([g(1.0, 1.01), g(2.0, 2.01)], loss, replicates=True) == {0}
    assert marks.best_groups([g(1.0, 1.01), g(2.0, 2.01)], loss, replicates=False) == set()
    assert marks.best_groups([g(1.0, 1.01), g(1.0, 1.01)], loss, replicates=True) == set()  # a tie
    assert marks.best_groups([g(5.0, 5.1), g(1.0, 1.1)], rate, replicates=True) == {0}
    assert marks.best_groups([g(5.0, 5.1, busy=True), g(1.0, 1.1)], rate, replicates=True) == set()
    assert marks.best_groups([g(5.0, 5.1), g(1.0, 1.1, busy=True)], rate, replicates=True) == set()
    assert marks.best_groups([g(3.0), g(3.0), g(6.0)], params) == {0, 1}  # exact: ties all bold
    assert marks.best_groups([g(1.0, 1.01), g(2.0, 2.01)], loss, among=[1], replicates=True) == set()


# --------------------------------------------------------------------------- contention


def busy_grid(root: Path, busy_rank: int, why: dict, ranks=(1, 2, 4, 8)) -> None:
    for i, r in enumerate(ranks):
        c = {**CONTENTION, **(why if r == busy_rank else {})}
        write_run(
            root / str(i),
            [f"rank={r}", "+sweep=ranks"],
            {**RANK_METRICS[r], "contention": c},
            config={**config_for("lora", r), "study": "ranks"},
            curve=[5.0, 4.0, 3.0],
        )


@pytest.mark.parametrize(
    ("why", "said"),
    [
        ({"cpu_wait_share": 0.41}, "threads waited for a CPU 41% of the time"),
        ({"load1_max": 4.6}, "load average up to 4.6 on 2 CPUs"),
        ({"gpu_other_processes": 2}, "2 other processes on its GPU"),
    ],
)
def test_timings_under_contention_are_marked_and_explained(tmp_path, why, said, drawn):
    busy_grid(tmp_path, 8, why)
    rep = write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert cells(md, "tokens/s") == ["1,500", "1,400", "1,600", "1,300 †"]
    assert cells(md, "time/epoch")[-1].endswith(" †") and not cells(md, "time/epoch")[0].endswith("†")
    assert not any(marks.BUSY in c for c in cells(md, "eval loss"))  # only timings depend on the load
    assert f"Marked: rank=8 ({said})" in md
    assert "† timing not comparable: the run trained while the machine was busy" in md
    assert "above its CPUs + 1" in md and "10% or more" in md
    assert "Load while the timed runs trained: 1-minute load average" in md
    assert [r["busy"] for r in __import__("csv").DictReader((tmp_path / "results.csv").open())] == [
        "",
        "",
        "",
        said,
    ]
    line = next(p for p in rep.plots if p.kind == "line")
    assert plots.BUSY_LABEL in line.series  # the busy point is marked on the tokens/s panel


def test_an_idle_load_is_not_marked(tmp_path):
    busy_grid(tmp_path, 8, {"load1_max": 2.9, "cpu_wait_share": 0.09})  # 2 CPUs + 1, 10%: just under
    md = md_of(tmp_path)
    assert not any(marks.BUSY in c for c in cells(md, "tokens/s"))
    assert "timing not comparable" not in md
    assert "CPU wait 2%–9% of runnable time" in md


def test_busy_timing_never_bold_even_with_separate_intervals(tmp_path):
    busy = {"cpu_wait_share": 0.3}
    seeds_grid(
        tmp_path,
        {4: [1500.0, 1510.0, 1490.0], 8: [1000.0, 1010.0, 990.0]},
        key="tokens_per_s",
        extra=lambda r, s: {"contention": {**CONTENTION, **(busy if (r, s) == (8, 1) else {})}},
    )
    md = md_of(tmp_path)
    assert bold(md)["tokens/s"] == []
    assert "No bold for tokens/s, time/epoch: some of their cells were timed on a busy machine (†)" in md
    assert "Marked: rank=8, seed=1 (threads waited for a CPU 30% of the time)" in md


def test_bars_hatch_busy_timings(tmp_path, drawn):
    for i, name in enumerate(["adamw", "sgd"]):
        cfg = config_for("full")
        cfg["optim"]["name"] = name
        c = {**CONTENTION, "cpu_wait_share": 0.5} if i else CONTENTION
        write_run(tmp_path / str(i), [f"optim={name}"], {"contention": c}, config=cfg)
    rep = write(tmp_path)
    bars = next(p for p in rep.plots if p.kind == "bars")
    assert plots.BUSY_LABEL in bars.series
    [fig] = [f for f in drawn if f._suptitle.get_text() == bars.title]
    time_ax = fig.axes[0]
    assert [p.get_hatch() for p in time_ax.patches] == [None, "//"]


# --------------------------------------------------------------------------- extrapolated time/epoch


def test_extrapolated_time_per_epoch_is_marked(tmp_path):
    flags = [True, False, None, None]  # None: an older record; its `epochs` decides
    epochs = [0.06, 3.0, 0.5, 2.0]
    for i, (flag, ep) in enumerate(zip(flags, epochs, strict=True)):
        m = {**RANK_METRICS[[1, 2, 4, 8][i]], "epochs": ep, "time_per_epoch_extrapolated": flag}
        if flag is None:
            m.pop("time_per_epoch_extrapolated")
        write_run(
            tmp_path / str(i), [f"rank={[1, 2, 4, 8][i]}"], m, config=config_for("lora", [1, 2, 4, 8][i])
        )
    for i in (2, 3):  # drop the key from the record, as records before it were written
        path = tmp_path / str(i) / records.RECORD
        rec = json.loads(path.read_text())
        rec["metrics"].pop("time_per_epoch_extrapolated", None)
        path.write_text(json.dumps(rec))
    md = md_of(tmp_path)
    assert [c.startswith(marks.EXTRAPOLATED) for c in cells(md, "time/epoch")] == [True, False, True, False]
    assert "~ time/epoch extrapolated: the run trained less than one epoch (0.06–0.5 of an epoch)" in md


def test_no_extrapolation_no_note(tmp_path):
    for i, r in enumerate((1, 2)):
        m = {**RANK_METRICS[r], "epochs": 3.0, "time_per_epoch_extrapolated": False}
        write_run(tmp_path / str(i), [f"rank={r}"], m, config=config_for("lora", r))
    md = md_of(tmp_path)
    assert "extrapolated" not in md and not any("~" in c for c in cells(md, "time/epoch"))


# --------------------------------------------------------------------------- axes, labels, memory


def ranks_grid(root: Path, ranks=(1, 2, 4, 8, 16, 32, 64), device="cpu", baseline=True) -> None:
    for i, r in enumerate(ranks):
        m = {
            "eval_loss": 1.3 + 0.0001 * i,
            "peak_memory_mb": 768.0 + 5 * i,  # 768–798 MiB: a flat line, not a steep climb
            "predicted_memory_mb": 700.0 + 0.1 * i,
            "tokens_per_s": 1050.0 - i,
            "trainable_params": 3072 * r,
            "checkpoint_bytes": 13000 * r,
        }
        write_run(
            root / str(i),
            [f"rank={r}", "+sweep=ranks"],
            m,
            config={**config_for("lora", r), "study": "ranks"},
            device=device,
            curve=[5.0 - 0.01 * i, 4.0, 3.0 + 0.01 * i],
        )
        if not baseline:
            path = root / str(i) / records.RECORD
            rec = json.loads(path.read_text())
            for k in ("memory_before_training_mb", "contention", "time_per_epoch_extrapolated"):
                rec["metrics"].pop(k)
            path.write_text(json.dumps(rec))


def test_axes_from_zero_log2_ranks_and_no_overprinting(tmp_path, drawn):
    ranks_grid(tmp_path, device="NVIDIA H200")
    rep = write(tmp_path)
    by_kind = {p.kind: p for p in rep.plots}
    line = by_kind["line"]
    assert line.ylabels == ["eval loss", "peak memory (MiB)", "tokens/s"]  # on GPU the peak is meaningful
    assert line.ylims[1][0] == 0 and line.ylims[1][1] >= 798  # memory from zero
    assert line.ylims[2][0] == 0 and line.ylims[2][1] >= 1050  # tokens/s from zero
    assert line.xscales == ["log"] * 3  # ranks 1–64: a log2 axis
    assert line.xticks == [["1", "2", "4", "8", "16", "32", "64"]] * 3  # the swept values only
    pareto, memory = by_kind["pareto"], by_kind["memory"]
    assert set(pareto.points) | set(pareto.hidden) == {"1", "2", "4", "8", "16", "32", "64"}
    assert not any("=" in t for t in pareto.points + memory.points)  # "rank=4ank=2" no more
    assert pareto.title.endswith("(points: rank)")
    for p in rep.plots:
        assert p.overprinted == [], p.file
    # the same check on the figures' own texts: no two visible labels of an axes share pixels
    for fig in drawn:
        r = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = [t.get_window_extent(r) for t in ax.texts if t.get_visible()]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
            frame = ax.get_window_extent(r)
            assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes)


def test_long_category_labels_rotate_or_thin_rather_than_overprint(tmp_path, drawn):
    names = ["cosine_with_restarts", "constant_with_warmup", "polynomial", "linear", "constant", "cosine"]
    for i, name in enumerate(names):
        cfg = config_for("lora")
        cfg["lr_schedule"]["name"] = name
        write_run(tmp_path / str(i), [f"lr_schedule={name}"], {"eval_loss": 5.0 + i / 10}, config=cfg)
    rep = write(tmp_path)
    bars = next(p for p in rep.plots if p.kind == "bars")
    assert bars.overprinted == []
    assert all(set(t) <= set(names) and t for t in bars.xticks)
    assert all(lo == 0 for lo, _ in bars.ylims[:2])  # time and memory bars from zero


def test_crowded_points_are_moved_or_left_out(tmp_path, drawn):
    for i, r in enumerate((1, 2, 4, 8, 16, 32, 64)):  # one spot for all: measured ≈ predicted ≈ 768 MiB
        write_run(
            tmp_path / str(i),
            [f"rank={r}"],
            {"peak_memory_mb": 768.0 + 0.01 * i, "predicted_memory_mb": 768.0, "eval_loss": 1.3},
            config=config_for("lora", r),
            device="NVIDIA H200",
        )
    memory = plots.plot_memory(report.load(tmp_path, code=current_code()))[0]
    assert memory.overprinted == [] and sorted(memory.points + memory.hidden, key=int) == [
        "1",
        "2",
        "4",
        "8",
        "16",
        "32",
        "64",
    ]


def test_cpu_memory_plots_show_what_training_added(tmp_path, drawn):
    ranks_grid(tmp_path, ranks=(1, 2, 4))
    rep = write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    line = next(p for p in rep.plots if p.kind == "line")
    assert line.ylabels[1] == "memory added in training (MiB)" and line.ylims[1][0] == 0
    assert cells(md, "memory added") == ["78 MiB", "83 MiB", "88 MiB"]  # peak − 690 MiB when training began
    assert "On CPU the plots show the memory added in training" in md
    assert "memory added: peak memory minus the memory in use when training began" in md


def test_cpu_records_without_a_baseline_leave_memory_out_of_the_plots(tmp_path, drawn):
    ranks_grid(tmp_path, ranks=(1, 2, 4), baseline=False)
    rep = write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    by_kind = {p.kind: p for p in rep.plots}
    assert by_kind["line"].ylabels == ["eval loss", "tokens/s"]
    assert by_kind["pareto"].xlabels == ["trainable params"]
    assert "Memory is left out of the plots: these runs ran on CPU" in md
    header, _ = md_table(md)
    assert "peak memory" in header and "memory added" not in header  # the table keeps the measured peak
    # an old record: no marks, no crash, and the report says what it cannot check
    assert "3 run(s) hold no load measurement" in md
    assert not any(marks.BUSY in c for c in cells(md, "time/epoch"))
    assert all(c.startswith(marks.EXTRAPOLATED) for c in cells(md, "time/epoch"))  # from `epochs` < 1


def test_eval_loss_curve_beside_the_training_loss(tmp_path, drawn):
    ranks_grid(tmp_path, ranks=(1, 2))
    for i in (0, 1):
        with (tmp_path / str(i) / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 30, "eval/loss": 3.1 + i}) + "\n")
    rep = write(tmp_path)
    curves = next(p for p in rep.plots if p.kind == "curves")
    assert curves.ylabels == ["train loss", "eval loss"] and curves.xlabels == ["step", "step"]
    [fig] = [f for f in drawn if f._suptitle.get_text() == curves.title]
    eval_ax = fig.axes[1]
    assert [list(ln.get_xdata()) for ln in eval_ax.lines] == [[0, 30], [0, 30]]
    assert [list(ln.get_ydata()) for ln in eval_ax.lines] == [[6.2, 3.1], [6.2, 4.1]]


# --------------------------------------------------------------------------- what the run measures


def test_session_records_the_new_keys():
    assert {"contention", "memory_before_training_mb", "time_per_epoch_extrapolated"} <= set(
        records.SESSION_METRICS
    )


def _session(epoch: float, runtime: float = 10.0, start_epoch: float = 0.0):
    from src import speed, trainer

    state = SimpleNamespace(
        log_history=[], epoch=epoch, num_input_tokens_seen=1000, global_step=10, stateful_callbacks={}
    )
    cond = callbacks.Conditions(gpu_processes=lambda: None)
    cond.on_train_begin(None, state, None)
    cond.on_train_end(None, state, None)
    hooks = SimpleNamespace(
        totals=SimpleNamespace(train_loss=lambda: 1.0),
        padding=SimpleNamespace(share=lambda: 0.1),
        steps=speed.StepTimes(),
        conditions=cond,
    )
    cb = SimpleNamespace(start_step=0, start_tokens=0, start_epoch=start_epoch)
    result = SimpleNamespace(metrics={"train_runtime": runtime})
    hf = SimpleNamespace(state=state, args=SimpleNamespace(torch_compile=False))
    return trainer.session_metrics(hf, result, cb, hooks, "packing")


def test_session_metrics_say_whether_time_per_epoch_is_extrapolated():
    part, whole, resumed = _session(0.25), _session(2.0), _session(2.5, start_epoch=2.0)
    assert part["time_per_epoch_extrapolated"] is True and part["time_per_epoch_s"] == pytest.approx(40.0)
    assert whole["time_per_epoch_extrapolated"] is False and whole["time_per_epoch_s"] == pytest.approx(5.0)
    assert resumed["time_per_epoch_extrapolated"] is True  # this session trained half an epoch
    none = _session(0.25, runtime=0.0)
    assert none["time_per_epoch_s"] is None and none["time_per_epoch_extrapolated"] is None
    assert part["memory_before_training_mb"] > 0  # this process's resident set
    c = part["contention"]
    assert c["cpus"] == callbacks.cpus_available() and c["load_samples"] == 2
    assert c["gpu_other_processes"] is None


def test_conditions_before_training_began_record_nothing():
    assert callbacks.Conditions(gpu_processes=lambda: None).summary() is None  # resumed at max_steps


def test_wait_share_arithmetic():
    before = {"1": (100, 0), "2": (50, 10)}
    after = {"1": (200, 100), "3": (40, 10)}  # thread 2 ended, thread 3 started
    assert callbacks.wait_share(before, after) == pytest.approx((100 + 10) / (100 + 100 + 40 + 10))
    assert callbacks.wait_share(None, after) is None and callbacks.wait_share(after, after) is None


def test_gpu_processes_parsing():
    uuid = "1b2c3d4e-0000-1111-2222-333344445555"
    text = f"GPU-{uuid}, 4242\nGPU-{uuid}, 77\nGPU-ffffffff-0000-1111-2222-333344445555, 99\n"
    pids = callbacks.parse_compute_apps(text, uuid)
    assert pids == {4242, 77}
    assert callbacks.other_gpu_processes(pids, me=4242) == 1
    assert callbacks.other_gpu_processes(pids, me=5) == 1  # own pid not seen (a container): one of them is us
    assert callbacks.other_gpu_processes({5}, me=5) == 0 and callbacks.other_gpu_processes({6}, me=5) == 0
    assert callbacks.other_gpu_processes(set(), me=5) is None  # not even this process: the device unmatched
    assert callbacks.other_gpu_processes(None) is None


def test_cpus_and_load_are_read():
    assert 1 <= callbacks.cpus_available() <= (os.cpu_count() or 1)
    assert callbacks.load1() is None or callbacks.load1() >= 0


@pytest.mark.skipif(callbacks.thread_schedstat() is None, reason="the kernel keeps no schedstat")
def test_cpu_wait_rises_when_others_compete():
    """A busy loop here while more busy processes than CPUs run: this thread waits for a CPU a good share of
    its runnable time (measured 30–70% on a 2-core machine), which is what marks a timing †."""
    n = callbacks.cpus_available() + 1
    burn = "import time\nt = time.time()\nwhile time.time() - t < 1.5:\n    pass\n"
    others = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(n)]
    try:
        time.sleep(0.2)
        before = callbacks.thread_schedstat()
        t = time.time()
        while time.time() - t < 0.8:
            pass
        share = callbacks.wait_share(before, callbacks.thread_schedstat())
    finally:
        for p in others:
            p.wait(30)
    assert share is not None and share >= marks.WAIT_LIMIT, share
    assert math.isfinite(share) and share < 1


def test_gpu_processes_from_nvidia_smi_when_nvml_is_missing(monkeypatch):
    uuid = "1b2c3d4e-0000-1111-2222-333344445555"
    out = f"GPU-{uuid}, {os.getpid()}\nGPU-{uuid}, 1\n"
    monkeypatch.setattr(callbacks, "_gpu_uuid", lambda: uuid)
    monkeypatch.setattr(callbacks, "_gpu_pids_nvml", lambda u: None)  # no pynvml
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **kw: SimpleNamespace(returncode=0, stdout=out, stderr="")
    )
    assert callbacks.gpu_other_processes() == 1
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: (_ for _ in ()).throw(OSError("no nvidia-smi")))
    assert callbacks.gpu_other_processes() is None
    monkeypatch.setattr(callbacks, "_gpu_uuid", lambda: None)  # CPU
    assert callbacks.gpu_other_processes() is None
