"""Hostile inputs to the run commands (search, train) and the engine under
them: each case either works or is refused with one line naming the flag or
the file, with the documented exit status, and no file that existed before is
changed. Tiny settings: every case runs in seconds."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from rspnet.engine.faults import SetupStopped, StopSignal
from rspnet.engine.session import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, EXIT_USAGE
from rspnet.files import atomic_open, check_output_dir, check_output_file
from rspnet.search.__main__ import main as search_main
from rspnet.train.__main__ import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--size", "64x64", "--train-images", "4", "--val-images", "2", "--batch-size", "2", "--epochs", "1",
         "--no-progress", "--threads", "1"]
SEARCH = ["--stage", "1", "--size", "32x32", "--images", "8", "--batch-size", "2", "--epochs", "1",
          "--channels", "4", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory):
    """A small architecture of the search space, drawn by the product's own
    random baseline (``--random``)."""
    out = tmp_path_factory.mktemp("arch") / "random"
    assert search_main(["--random", "1", "--channels", "8", "--layers", "2", "--out", str(out),
                        "--no-progress"]) == EXIT_OK
    return str(out / "random-000.json")


def _snapshot(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def _usage_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == EXIT_USAGE
    return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------- a run's directory is a run
@pytest.mark.parametrize("command", ["train", "search"])
@pytest.mark.parametrize("resume", [[], ["--resume", "auto"]])
def test_a_directory_holding_any_file_of_a_run_is_not_overwritten(command, resume, arch_file, tmp_path,
                                                                    capsys):
    """A run whose checkpoints were deleted still has its results: a fresh
    run (or --resume auto, finding no checkpoint) refuses the directory."""
    out = tmp_path / "earlier"
    out.mkdir()
    for name in ("best.pt", "metrics.json", "architecture.json", "summary.json"):
        (out / name).write_bytes(b"an earlier run's " + name.encode())
    before = _snapshot(out)
    args = ["--out", str(out), *resume]
    call = (lambda: train_main(["--arch", arch_file, *TRAIN, *args])) if command == "train" else \
        (lambda: search_main([*SEARCH, *args]))
    line = _usage_error(capsys, call)
    assert f"--out {out} already holds files (architecture.json, best.pt, metrics.json, ...)" in line
    assert _snapshot(out) == before


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_output_directory_that_cannot_be_made_is_refused_before_any_work(where, arch_file, tmp_path,
                                                                            capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "run" if where == "under-a-file" else "/proc/rspnet-cannot-write-here/run"
    line = _usage_error(capsys, lambda: train_main(["--arch", arch_file, *TRAIN, "--out", str(out)]))
    assert line.startswith("usage:") is False and f"--out {out}" in line
    assert os.listdir(tmp_path) == ["a-file"] and blocker.read_text() == "not a directory"


def test_output_checks_create_nothing(tmp_path):
    target = tmp_path / "new" / "deeper"
    check_output_dir(target, "--out")
    check_output_file(tmp_path / "new2" / "x.json", "--report")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="--report .*is a directory"):
        check_output_file(tmp_path, "--report")
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ValueError, match=r"--save-predictions .*inside the input"):
        check_output_dir(data / "masks", "--save-predictions", inputs=[data])


# -------------------------------------------------------- faults mid-run
def test_a_full_disk_while_checkpointing_is_one_line_and_exit_1(arch_file, tmp_path, monkeypatch, capsys):
    import rspnet.engine.checkpoint as checkpoint

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(f, "name", "checkpoint"))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = tmp_path / "run"
    assert train_main(["--arch", arch_file, *TRAIN, "--out", str(out)]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "No space left on device" in errors[0], err
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]   # the atomic write cleaned up


def test_a_batch_of_only_void_pixels_trains_on(arch_file, tmp_path, monkeypatch):
    """No labelled pixel in a batch is nothing to learn from, not a divergence."""
    from rspnet.train import Trainer

    real_step = Trainer._step

    def void_batch(self, images, labels):
        return real_step(self, images, torch.full_like(labels, 255) if self.step == 0 else labels)

    monkeypatch.setattr(Trainer, "_step", void_batch)
    out = tmp_path / "void"
    assert train_main(["--arch", arch_file, *TRAIN, "--out", str(out)]) == EXIT_OK
    history = json.loads((out / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(float(v))) for v in _numbers(history))


def _numbers(obj):
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


# ------------------------------------------------------------- stopping
def test_a_stop_signal_before_the_loop_polls_stops_at_once():
    with StopSignal() as stop:
        with pytest.raises(SetupStopped) as exc:
            try:   # no ``except Exception`` on the way (tqdm's, a library's) may swallow it
                os.kill(os.getpid(), signal.SIGTERM)   # the handler runs before the next bytecode
            except Exception:
                pytest.fail("a stop during set-up was caught as an Exception")
        assert exc.value.path is None and exc.value.signal == signal.SIGTERM
    with StopSignal() as stop:
        assert stop() is False            # the loop polls: from now on a signal is a request
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() is True


def test_sigterm_while_set_up_blocks_on_a_read_stops_with_the_stop_status(arch_file, tmp_path):
    """A read that blocks during set-up (a FIFO, a hung network mount) no
    longer makes the run deaf to SIGTERM."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    script = tmp_path / "blocked.py"
    script.write_text(textwrap.dedent("""
        import sys
        import rspnet.train.trainer as trainer
        def blocking(config):
            print("reading", file=sys.stderr, flush=True)
            open(sys.argv[1]).read()
        trainer.build_datasets = blocking
        from rspnet.train.__main__ import main
        sys.exit(main(sys.argv[2:]))
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(fifo), "--arch", arch_file, *TRAIN,
                             "--out", str(tmp_path / "run")], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    for line in proc.stderr:   # (warnings may come first)
        if line.strip() == "reading":
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, err
    assert "stopped during set-up" in err and "Traceback" not in err


# -------------------------------------------------- settings and caches
@pytest.mark.parametrize("command", ["train", "search"])
def test_data_root_without_data_is_refused(command, arch_file, tmp_path, capsys):
    args = ["--data-root", str(tmp_path), "--out", str(tmp_path / "run")]
    call = (lambda: train_main(["--arch", arch_file, *TRAIN, *args])) if command == "train" else \
        (lambda: search_main([*SEARCH, *args]))
    line = _usage_error(capsys, call)
    assert f"--data-root {tmp_path} is given, but --data is synthetic" in line
    assert os.listdir(tmp_path) == []


def test_an_impossible_parameter_budget_fails_after_the_probe_not_every_draw(monkeypatch):
    from rspnet.search import SearchConfig, baseline

    draws = []
    real = baseline.random_architecture
    monkeypatch.setattr(baseline, "random_architecture", lambda *a, **k: draws.append(1) or real(*a, **k))
    config = SearchConfig(channels=4, layers=2)
    with pytest.raises(ValueError, match=r"--param-budget 1e-06: only 0 of 12 random architectures"):
        baseline.sample_architectures(config, 2, max_params=1.0, probe=12)
    assert len(draws) == 12
    # a budget that about half the space meets is still drawn in full
    sizes = sorted(p for _, p in baseline.sample_architectures(config, 6))
    found = baseline.sample_architectures(config, 3, max_params=sizes[3], probe=12)
    assert len(found) == 3 and all(p <= sizes[3] for _, p in found)


def test_a_damaged_latency_cache_is_named_and_measured_afresh(tmp_path):
    from rspnet.search.cost import LatencyMeter

    path = tmp_path / "latency.json"
    path.write_text('{"entries": {"x": "unterminated')
    with pytest.warns(RuntimeWarning, match=f"--latency-table {path}: not a readable latency cache"):
        meter = LatencyMeter(path, "cpu", timer=lambda module, inputs: 1.5)
    conv = torch.nn.Conv2d(1, 1, 1)
    assert meter(conv, [torch.zeros(1, 1, 2, 2)]) == 1.5
    meter.save()
    assert list(json.loads(path.read_text())["entries"].values()) == [1.5]


def test_a_latency_table_path_that_cannot_be_written_is_refused_first(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "run"
    line = _usage_error(capsys, lambda: search_main([*SEARCH, "--latency-budget", "5", "--out", str(out),
                                                     "--latency-table", str(blocker / "t.json")]))
    assert f"--latency-table {blocker / 't.json'}" in line and not out.exists()


@pytest.mark.parametrize("variable", ["RSPNET_BACKEND", "RSPNET_TUNE"])
def test_an_invalid_environment_setting_warns_instead_of_breaking_every_command(variable):
    proc = subprocess.run([sys.executable, "-m", "rspnet.info"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, variable: "bogus"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{variable}='bogus' is not one of" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(umask, tmp_path):
    previous = os.umask(umask)
    try:
        with atomic_open(tmp_path / "f") as f:
            f.write(b"x")
        with open(tmp_path / "g", "wb") as f:   # what a plain open() gives: the reference
            f.write(b"x")
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "f").st_mode & 0o777 == os.stat(tmp_path / "g").st_mode & 0o777 \
        == 0o666 & ~umask


def test_a_checkpoint_directory_is_named_as_one(arch_file, tmp_path, capsys):
    from rspnet.evaluate import main as evaluate_main

    line = _usage_error(capsys, lambda: evaluate_main(["--arch", arch_file, "--checkpoint", str(tmp_path),
                                                       "--size", "64x64", "--no-progress"]))
    assert f"--checkpoint {tmp_path}: is a directory" in line


# ------------------------------------------- the second sweep's cases
@pytest.fixture
def folder_data(tmp_path):
    from rspnet.data import write_folder_layout

    root = tmp_path / "data"
    write_folder_layout(root, {"train": 4, "val": 2}, size=(64, 64))
    return root


@pytest.mark.parametrize("command", ["train", "search"])
def test_a_run_never_writes_inside_its_data_root(command, folder_data, arch_file, capsys):
    before = sorted(str(p) for p in folder_data.rglob("*"))
    out = folder_data / "images" / "train" / "run"
    args = ["--data", "folder", "--data-root", str(folder_data), "--out", str(out)]
    call = (lambda: train_main(["--arch", arch_file, *TRAIN, *args])) if command == "train" else \
        (lambda: search_main([*SEARCH, *args]))
    assert "inside the input" in _usage_error(capsys, call)
    assert sorted(str(p) for p in folder_data.rglob("*")) == before


def test_a_second_run_on_a_directory_in_use_is_refused(arch_file, tmp_path, capsys):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".rspnet.lock", "w") as lock:   # what a running run holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _usage_error(capsys, lambda: train_main(["--arch", arch_file, *TRAIN, "--out", str(out),
                                                        "--resume", "auto"]))
    assert "is being written by another run" in line and os.listdir(out) == [".rspnet.lock"]
    assert train_main(["--arch", arch_file, *TRAIN, "--out", str(out), "--resume", "auto"]) == EXIT_OK


@pytest.mark.parametrize("argv, message", [
    (["--size", "32000x32000"], "more than 134217728 pixels"),
    (["--workers", "99999"], "--workers must be in [0,"),
    (["--threads", "100000"], "--threads must be in [0,"),
    (["--weight-decay", "nan"], "expected a finite number"),
    (["--poly-power", "inf"], "expected a finite number"),
    (["--seed", str(2**70)], "below 2^32"),
])
def test_sizes_counts_and_numbers_no_machine_can_use_are_refused_first(argv, message, arch_file, tmp_path,
                                                                       capsys):
    out = tmp_path / "run"
    line = _usage_error(capsys, lambda: train_main(["--arch", arch_file, *TRAIN, *argv, "--out", str(out)]))
    assert message in line and not out.exists()


def test_an_architecture_wider_than_any_network_is_refused(arch_file, tmp_path, capsys):
    with open(arch_file) as f:
        arch = json.load(f)
    arch["widths"]["channels"] = 1_000_000
    (tmp_path / "wide.json").write_text(json.dumps(arch))
    line = _usage_error(capsys, lambda: train_main(["--arch", str(tmp_path / "wide.json"), *TRAIN,
                                                    "--out", str(tmp_path / "run")]))
    assert "widths.channels: 1000000 is out of range" in line


@pytest.mark.parametrize("text, name, message", [
    ("epochs: [1\n", "bad.yaml", "not valid YAML"),
    ("epochs: 1\n\tchannels: 4\n", "tab.yaml", "not valid YAML"),
    ("[" * 100000 + "]" * 100000, "deep.json", "nested too deeply"),
    ('{"size": [32]}', "short.json", "size: expected a list of 2"),
    ('{"arch_betas": [0.5]}', "betas.json", "arch_betas: expected a list of 2"),
    ('{"w_lr": -1}', "lr.json", "w_lr: expected a positive number"),
    ('{"size": [33, 64]}', "odd.json", "multiples of 32"),
    ('{"memory": "banana"}', "choice.json", "memory: 'banana' is not one of"),
])
def test_a_config_value_gets_the_checks_its_flag_gets(text, name, message, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "run"
    line = _usage_error(capsys, lambda: search_main([*SEARCH, "--config", str(path), "--out", str(out)]))
    assert f"--config {path}" in line and message in line and not out.exists()


@pytest.mark.parametrize("what", ["--config", "--arch", "classes.json"])
def test_a_fifo_as_a_settings_file_is_refused_without_blocking(what, arch_file, folder_data, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "rspnet.train", "--arch", arch_file, *TRAIN, "--out", str(tmp_path / "run")]
    if what == "--config":
        argv += ["--config", str(fifo)]
    elif what == "--arch":
        argv[argv.index(arch_file)] = str(fifo)
    else:
        os.remove(folder_data / "classes.json")
        os.mkfifo(folder_data / "classes.json")
        argv += ["--data", "folder", "--data-root", str(folder_data)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_divergence_is_reported_once_on_the_terminal(arch_file, tmp_path, monkeypatch, capsys):
    import rspnet.train.trainer as trainer

    real = trainer.segmentation_loss
    monkeypatch.setattr(trainer, "segmentation_loss",
                        lambda *a, **k: (lambda s, t, f=real(*a, **k): f(s, t) * float("nan")))
    from rspnet.engine.session import EXIT_DIVERGED

    assert train_main(["--arch", arch_file, *TRAIN, "--out", str(tmp_path / "nan")]) == EXIT_DIVERGED
    captured = capsys.readouterr()
    assert captured.err.count("the training diverged") == 1 and "diverged" not in captured.out
    assert "the training diverged" in (tmp_path / "nan" / "train.log").read_text()


def test_out_of_memory_is_one_line_and_status_1(capsys):
    from rspnet import cli

    def hungry():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4000000000000 bytes.")
    assert cli.guarded(hungry, "python -m rspnet.x")() == EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m rspnet.x: error: out of memory")
    with pytest.raises(RuntimeError, match="something else"):
        cli.guarded(lambda: (_ for _ in ()).throw(RuntimeError("something else")), "p")()


# ------------------------------------------- the third sweep's cases
@pytest.mark.parametrize("name, text", [("d.json", '{"epochs": 1, "epochs": 2}'), ("d.yaml", "epochs: 1\nepochs: 2\n")])
def test_a_setting_given_twice_in_a_file_is_refused(name, text, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    line = _usage_error(capsys, lambda: search_main([*SEARCH, "--config", str(path), "--out", str(tmp_path / "r")]))
    assert f"--config {path}" in line and "epochs given twice" in line


def test_tuple_flags_parse_to_numbers():
    from rspnet.cli import config_of
    from rspnet.search import SearchConfig
    from rspnet.search.__main__ import build_parser

    parser = build_parser()
    config = config_of(parser, parser.parse_args(["--arch-betas", "0.5", "0.9"]), SearchConfig, "search")
    assert config.arch_betas == (0.5, 0.9)


@pytest.mark.parametrize("argv, flag", [(["--rescale-channels", "4,8,16,4098"], "--rescale-channels"),
                                        (["--channels", "4096"], "--channels"),
                                        (["--head-channels", "100000"], "--head-channels")])
def test_widths_past_the_cap_are_refused_before_the_search(argv, flag, tmp_path, capsys):
    out = tmp_path / "run"
    line = _usage_error(capsys, lambda: search_main([*SEARCH, *argv, "--out", str(out)]))
    assert flag in line and "more than 4096" in line and not out.exists()


@pytest.mark.parametrize("command", ["search", "train", "evaluate"])
def test_ctrl_c_while_torch_is_imported_is_one_line_and_sigints_status(command, tmp_path):
    """Ctrl-C in the first seconds of a command (torch still importing, before
    the command handles signals) is one line, not an import traceback, and the
    process still ends with SIGINT's status. The interrupt is raised where the
    import of torch begins (a finder that a sitecustomize puts first), which is
    what Python does when SIGINT arrives there."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    proc = subprocess.run([sys.executable, "-m", f"rspnet.{command}", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), proc.stderr
    assert proc.stderr.strip() == "interrupted (Ctrl-C)"
    assert {p.name for p in tmp_path.iterdir()} - {"__pycache__"} == {"sitecustomize.py"}   # nothing written


def test_import_rspnet_in_a_program_leaves_the_exception_hook_alone():
    code = "import sys; hook = sys.excepthook; import rspnet.train; print(sys.excepthook is hook)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
