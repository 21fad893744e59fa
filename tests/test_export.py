"""rspnet.export: ONNX parity with onnxruntime (fp32, max abs diff <= 1e-4),
the cost report of the network as trained and folded, and that a failed
check never replaces an existing file."""
import json
import os

import pytest
import torch

from rspnet import export
from rspnet.export import main
from rspnet.train.__main__ import main as train_main
from tests.helpers.architectures import make_architecture
from tests.helpers.threads import single_thread
from tests.helpers.training import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    arch = base / "architecture.json"
    arch.write_text(json.dumps(make_architecture(1)))
    with single_thread():
        assert train_main(["--arch", str(arch), "--out", str(base / "train"), "--epochs", "1",
                           *TINY]) == 0
    return {"arch": str(arch), "checkpoint": str(base / "train" / "best.pt"), "base": base}


@pytest.mark.slow  # the ONNX export traces the network: 20-50 s on 2 shared cores
def test_onnx_parity_and_report(run, tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    onnx_path = tmp_path / "model.onnx"
    assert main(["--arch", run["arch"], "--checkpoint", run["checkpoint"], "--onnx", str(onnx_path),
                 "--report", "--size", "64x64", "--warmup", "1", "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "ONNX parity" in out and "FPS" in out and "parameters" in out
    report = json.loads((tmp_path / "model-report.json").read_text())
    onnx_report = report["onnx"]
    assert onnx_report["opset"] >= 17
    assert onnx_report["max_abs_diff"] <= 1e-4
    assert "batch" in onnx_report["dynamic"]
    assert any(s["input"][0] == 2 for s in onnx_report["per_shape"])   # the dynamic batch was checked
    assert report["params"] > 0 and report["flops"] > 0
    assert report["latency"]["median_ms"] > 0 and report["latency"]["fps"] > 0
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]

    # the file stands on its own: onnxruntime on a fresh input of batch 3
    import numpy as np
    import onnxruntime as ort

    from rspnet import data
    from rspnet.engine.checkpoint import load_checkpoint
    from rspnet.models import RSPNet

    model = RSPNet(run["arch"], data.NUM_CLASSES)
    model.load_state_dict(load_checkpoint(run["checkpoint"])["model"])
    model.eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_failed_parity_check_keeps_the_existing_file(run, tmp_path, monkeypatch, capsys):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous, good export")

    def fake_export(model, path, resolution, opset, dynamic, log):
        with open(path, "wb") as f:
            f.write(b"a broken export")
        return "batch"

    monkeypatch.setattr(export, "export_onnx", fake_export)
    monkeypatch.setattr(export, "check_onnx", lambda model, path, shapes: {
        "max_abs_diff": 0.5, "onnxruntime": "x",
        "per_shape": [{"input": list(s), "max_abs_diff": 0.5} for s in shapes]})
    assert main(["--arch", run["arch"], "--checkpoint", run["checkpoint"], "--onnx", str(target),
                 "--size", "64x64"]) == 1
    err = capsys.readouterr().err
    assert "max abs difference 5.000e-01 > tolerance 1e-04" in err and "was not written" in err
    assert target.read_bytes() == b"the previous, good export"
    assert os.listdir(tmp_path) == ["model.onnx"]       # no temporary file left behind


def test_report_without_checkpoint(run, tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["--arch", run["arch"], "--report", str(path), "--size", "32x64",
                 "--warmup", "1", "--iters", "1"]) == 0
    report = json.loads(path.read_text())
    assert report["checkpoint"] is None and report["resolution"] == [32, 64]
    assert report["dtype"] == "fp32" and report["compile"] is False


def test_report_counts_the_cells_whose_linear_states_are_merged():
    """A cell with skip_connect chains: the folded row says how many cells
    were simplified, costs fewer FLOPs and still gives the same outputs."""
    from rspnet.architecture import Architecture, Genotype
    from rspnet.models import RSPNet
    from rspnet.nn import DerivedCell

    cell = Genotype(normal=(("skip_connect", 0, 1), ("skip_connect", 0, 2), ("skip_connect", 1, 2),
                            ("dil_conv_3x3", 1, 3), ("skip_connect", 2, 3)), normal_concat=(1, 2, 3))
    torch.manual_seed(0)
    model = RSPNet(Architecture(cell=cell, channels=4, scales=2, head_channels=8), num_classes=3)
    cells = sum(isinstance(m, DerivedCell) for m in model.modules())
    rows = export.network_costs(model, (32, 64), torch.device("cpu"), torch.float32, False, 1, 1, "contiguous")
    folded = rows["folded"]
    assert folded["cells_folded"] == cells > 1 and folded["flops"] < rows["unfolded"]["flops"]
    assert folded["max_abs_diff_vs_unfolded"] <= 1e-5 * max(1.0, folded["max_abs_output"])
    text = export.format_report({"resolution": [32, 64], "params": rows["unfolded"]["params"],
                                 "flops": rows["unfolded"]["flops"], "folded": folded})
    assert f"0 left, linear states of {cells} cells merged (max |folded - unfolded|" in text


def test_report_sets_the_folded_network_beside_the_trained_one(run, tmp_path, capsys):
    """One run: the network as trained and BN-folded, printed and in the
    JSON, against counts made here; no reference network (that comparison is
    benchmarks/latency_vs_lraspp.py)."""
    path = tmp_path / "r.json"
    assert main(["--arch", run["arch"], "--checkpoint", run["checkpoint"], "--report", str(path),
                 "--size", "64x128", "--warmup", "1", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in ("rspnet", "rspnet, BN folded"):
        assert any(line.startswith(name + "  ") for line in lines), name
    assert "threads=1" in out and "BN folding" in out and "LRASPP" not in out
    report = json.loads(path.read_text())
    assert report["resolution"] == [64, 128] and report["cpu_threads"] == 1
    assert not {"reference", "ratios", "reference_note"} & set(report)

    from rspnet.engine.checkpoint import load_checkpoint
    from rspnet.models import RSPNet, count_flops

    model = RSPNet(run["arch"], 19)
    model.load_state_dict(load_checkpoint(run["checkpoint"])["model"])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    params = sum(p.numel() for p in model.parameters())
    assert report["params"] == params
    # folding drops gamma and beta of each (affine) BN and gives its conv a bias
    assert report["folded"]["params"] == params - sum(bn.num_features for bn in bns)
    assert (report["folded"]["bn_folded"], report["folded"]["bn_left"]) == (len(bns), 0)
    assert report["folded"]["max_abs_diff_vs_unfolded"] <= 1e-4
    assert report["folded"]["flops"] == report["flops"] == count_flops(model.eval(), (64, 128))
    for row in (report, report["folded"]):
        assert row["latency"]["median_ms"] > 0
        assert row["latency"]["memory_format"] in ("contiguous", "channels_last")
    assert f"{report['folded']['params']:,}" in out


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to do"),
    (["--onnx", "m.onnx", "--opset", "16"], "at least 17"),
    (["--report", "--size", "100x100"], "multiples of 32"),
    (["--report", "--size", "64y"], "expected HxW"),
    (["--onnx", "/nonexistent/dir/m.onnx"], "does not exist"),
    (["--report", "--checkpoint", "/nonexistent.pt"], "no such file"),
    (["--report", "--memory-format", "nhwc"], "invalid choice"),
    (["--report", "--threads", "-1"], "expected an integer >= 0"),
    (["--report", "--no-reference"], "unrecognized arguments: --no-reference"),   # LRASPP: benchmarks/
])
def test_bad_cli_input_is_an_argparse_error(run, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["--arch", run["arch"], *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_latency_bf16_compiled(run, tmp_path):
    path = tmp_path / "gpu.json"
    assert main(["--arch", run["arch"], "--checkpoint", run["checkpoint"], "--report", str(path),
                 "--device", "cuda", "--dtype", "bf16", "--compile", "--size", "256x512",
                 "--warmup", "3", "--iters", "10"]) == 0
    report = json.loads(path.read_text())
    assert report["device"] == "cuda" and report["dtype"] == "bf16" and report["compile"] is True
    assert report["latency"]["fps"] > 0


@pytest.mark.slow  # traces the network: 10-30 s on 2 shared cores
def test_onnx_parity_of_the_detail_head(tmp_path, capsys):
    """The head that reads the stem's 1/2 map (the stem returns two maps)
    exports and runs in onnxruntime as the PyTorch network does."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    arch = make_architecture(2)
    arch["widths"]["head"] = "detail"
    path = tmp_path / "detail.json"
    path.write_text(json.dumps(arch))
    with single_thread():
        assert train_main(["--arch", str(path), "--out", str(tmp_path / "train"), "--epochs", "1", *TINY]) == 0
    checkpoint = tmp_path / "train" / "best.pt"
    onnx_path = tmp_path / "detail.onnx"
    assert main(["--arch", str(path), "--checkpoint", str(checkpoint), "--onnx", str(onnx_path),
                 "--size", "64x64"]) == 0
    assert "max |onnxruntime - torch|" in capsys.readouterr().out
    import numpy as np
    import onnxruntime as ort

    from rspnet import data
    from rspnet.engine.checkpoint import load_checkpoint
    from rspnet.models import RSPNet

    model = RSPNet(str(path), data.NUM_CLASSES)
    model.load_state_dict(load_checkpoint(str(checkpoint))["model"])
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4
