import json

import pytest
import torch

from rspnet.models import RSPNet
from rspnet.architecture import Architecture
from rspnet.search.__main__ import main
from rspnet.search.stage import StageSearch, checkpoint_series, load_search_checkpoint

TINY = ["--size", "32x32", "--images", "4", "--batch-size", "2", "--epochs", "2", "--channels", "4",
        "--layers", "2", "--no-progress"]


def newest(out, stage):
    """The newest checkpoint of a stage, loaded and verified."""
    return load_search_checkpoint(checkpoint_series(out, stage).list()[-1][1])


def test_two_stage_search_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("architecture.json", "summary.json", "cell.png", "network.png", "alphas.png",
                 "betas.png", "checkpoint-stage1-step00000002.pt", "checkpoint-stage2-step00000002.pt",
                 "search.log"):
        assert (out / name).is_file(), name
    assert f"architecture file: {out / 'architecture.json'}" in printed
    log = (out / "search.log").read_text()
    assert "[stage 1] epoch 2/2  train loss" in log and "arch loss" in log and "H(alpha)" in log
    assert "[stage 1] epoch 1/2" in log and "arch loss warm-up" in log   # warm-up: half the epochs
    assert "[stage 2] epoch 2/2" in log and "H(beta)" in log and "supernet mIoU on arch split B" in log
    arch = Architecture.load(out / "architecture.json")
    assert arch.layers == 2 and arch.channels == 4 and len(arch.cell.normal) == 7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["derived"]["params"] == sum(p.numel() for p in RSPNet(arch, 19).parameters())
    assert summary["derived"]["flops"] > 0 and summary["peak_memory"]["bytes"] > 0
    model = RSPNet(out / "architecture.json", num_classes=19)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 19, 32, 32)
    state = newest(out, 2)
    assert state["epoch"] == 2 and state["step"] == 2 and "a_optimizer" in state


def test_cost_aware_search_reports_the_tables_cost(tmp_path, capsys):
    """--flops-budget / --latency-budget: the expectation is logged each
    epoch, the latency table is written once, and the summary's table FLOPs
    are the derived network's counted FLOPs exactly."""
    out, table = tmp_path / "run", tmp_path / "latency.json"
    assert main(TINY + ["--out", str(out), "--candidates", "both", "--flops-budget", "0.001", "--latency-budget", "1",
                        "--latency-size", "64x64", "--latency-table", str(table)]) == 0
    assert "cost table:" in capsys.readouterr().out
    log = (out / "search.log").read_text()
    assert "E[GFLOPs]" in log and "E[latency]" in log
    derived = json.loads((out / "summary.json").read_text())["derived"]
    assert derived["table_flops"] == derived["flops"] and derived["flops_budget"] == 1e6
    assert derived["table_latency"] > 0 and table.is_file() and derived["latency_calibration"] > 0
    cached = json.loads(table.read_text())["entries"]
    assert derived["latency_calibration"] in [v for k, v in cached.items() if "|calibration|" in k]
    assert json.loads((out / "architecture.json").read_text())["search"]["flops_budget"] == 1e6


def test_light_head_and_skip_limit_reach_the_architecture(tmp_path):
    """--head light --max-skip 1 --candidates nopool: the file names the head,
    the derived cell has at most one skip connection and no pooling, the
    summary's FLOPs are the network's."""
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out), "--head", "light", "--max-skip", "1", "--head-channels", "8",
                        "--flops-budget", "0.001", "--scale-channels", "4,8,12,16", "--candidates", "nopool",
                        "--same-scale-paths"]) == 0
    data = json.loads((out / "architecture.json").read_text())
    assert data["widths"]["head"] == "light" and data["search"]["max_skip"] == 1
    assert data["widths"]["scale_channels"] == [4, 8, 12, 16] and data["search"]["same_scale_paths"]
    arch = Architecture.load(data)
    for node in data["macro"]["nodes"]:   # every node whose scale exists one layer down reads it
        layer, scale = node["node"]
        if layer > 1 and scale <= min(layer - 2, arch.scales - 1):
            assert [layer - 1, scale] in [p["from"] for p in node["paths"]]
    ops = [op for op, _, _ in arch.cell.normal]
    assert ops.count("skip_connect") <= 1 and not {"max_pool_3x3", "avg_pool_3x3"} & set(ops)
    model = RSPNet(arch, 19)
    assert type(model.head).__name__ == "LightHead"
    derived = json.loads((out / "summary.json").read_text())["derived"]
    assert derived["params"] == sum(p.numel() for p in model.parameters())
    assert derived["table_flops"] == derived["flops"]


class Interrupt(Exception):
    pass


def test_resume_continues_where_the_search_stopped(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    main(TINY + ["--out", str(reference)])

    real_save = StageSearch.save
    stops = iter([(1, 1), (2, 1)])          # die right after these (stage, epoch) checkpoints
    stop = next(stops)

    def save_then_die(self):
        nonlocal stop
        path = real_save(self)
        if (self.stage, self.epoch) == stop:
            stop = next(stops, None)
            raise Interrupt
        return path

    monkeypatch.setattr(StageSearch, "save", save_then_die)
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        main(TINY + ["--out", str(out)])
    assert newest(out, 1)["epoch"] == 1
    with pytest.raises(Interrupt):
        main(TINY + ["--out", str(out), "--resume"])
    assert newest(out, 2)["epoch"] == 1
    main(TINY + ["--out", str(out), "--resume"])

    assert "resumed from" in (out / "search.log").read_text()
    for stage in (1, 2):
        a, b = newest(reference, stage), newest(out, stage)
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        for name, value in a["model"].items():
            assert torch.equal(value, b["model"][name]), (stage, name)
    assert Architecture.load(reference / "architecture.json") == Architecture.load(out / "architecture.json")


def test_stage2_alone_from_a_cell_file(tmp_path):
    first = tmp_path / "stage1"
    main(TINY + ["--stage", "1", "--out", str(first), "--edge-partial", "2", "--edge-normalization"])
    arch = Architecture.load(first / "architecture.json")
    assert arch.nodes is None and not checkpoint_series(first, 2).list()
    second = tmp_path / "stage2"
    main(TINY + ["--stage", "2", "--cell", str(first / "architecture.json"), "--out", str(second),
                 "--order", "second", "--memory", "store", "--param-penalty", "0.1",
                 "--param-budget", "0.001"])
    assert Architecture.load(second / "architecture.json").cell == arch.cell
    assert not checkpoint_series(second, 1).list()


@pytest.mark.parametrize("argv, message", [
    (["--size", "100x100"], "multiples of 32"),
    (["--size", "big"], "expected HxW"),
    (["--data", "imagenet"], "invalid choice: 'imagenet'"),
    (["--data", "cityscapes"], "--data cityscapes needs --data-root"),
    (["--stage", "2"], "--stage 2 needs --cell"),
    (["--resume"], "--resume needs --out"),
    (["--batch-size", "1"], "at least 2"),
    (["--epochs", "0"], "expected a positive integer"),
    (["--channels", "6", "--rsp-depth", "2"], "--channels 6"),
    (["--warmup", "11"], "--warmup must be in"),
    (["--memory", "cheap"], "invalid choice: 'cheap'"),
    (["--param-budget", "1"], "--param-budget needs --param-penalty"),
    (["--edge-partial", "3"], "--edge-partial 3 must divide"),
    (["--flops-budget", "0"], "expected a positive number"),
    (["--latency-budget", "-5"], "expected a positive number"),
    (["--flops-budget", "1", "--cost-weight", "0"], "need --cost-weight > 0"),
    (["--cost-weight", "-1"], "--cost-weight must be >= 0"),
    (["--candidates", "tiny"], "invalid choice: 'tiny'"),
    (["--latency-size", "100x100"], "multiples of 32"),
    (["--head", "aspp"], "invalid choice: 'aspp'"),
    (["--max-skip", "-1"], "--max-skip"),
    (["--scale-channels", "8,16,32,64"], "the first width is the channels of scale 0 (16), got 8"),
    (["--scale-channels", "16,32,47,64"], "every width must be even"),
    (["--scale-channels", "4,8,x"], "expected comma-separated integers"),
])
def test_bad_arguments_give_argparse_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(argv + ["--out", str(tmp_path / "x")] if "--resume" not in argv else argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_without_checkpoint_starts_afresh_and_needs_the_same_settings(tmp_path, capsys):
    out = tmp_path / "run"
    main(TINY + ["--stage", "1", "--out", str(out), "--resume"])   # nothing to resume: a fresh search
    assert "no checkpoint in" in (out / "search.log").read_text()
    assert newest(out, 1)["epoch"] == 2
    with pytest.raises(SystemExit):
        main(TINY + ["--stage", "1", "--out", str(out), "--resume", "--epochs", "3"])
    err = capsys.readouterr().err
    assert "--resume: epochs is 3 but" in err and "was made with 2" in err
    with pytest.raises(SystemExit):
        main(TINY + ["--images", "2", "--out", str(tmp_path / "few")])
    assert "fewer than --batch-size 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(TINY + ["--out", str(tmp_path / "x"), "--resume", str(tmp_path / "missing.pt")])
    assert "--resume " + str(tmp_path / "missing.pt") + ": no such file" in capsys.readouterr().err


def test_class_weighted_search_weighs_both_steps_with_the_training_formula(tmp_path, monkeypatch):
    """--class-weights enet: the weights are those rspnet.train computes from
    the same images, kept in summary.json, and the supernet's loss of both
    steps is the weighted cross-entropy (against F.cross_entropy(weight=))."""
    import torch.nn.functional as F

    from rspnet import data
    from rspnet.search import stage as stage_module
    from rspnet.train.losses import class_pixel_counts, class_weights

    losses = []
    real_init = stage_module.StageSearch.__init__

    def spy(self, *args, **kw):
        real_init(self, *args, **kw)
        model = self.model
        real_loss = model.loss

        def loss(images, labels):
            value = real_loss(images, labels)
            with torch.no_grad():
                reference = F.cross_entropy(model(images), labels, weight=model.class_weights, ignore_index=255)
            losses.append((value.detach(), reference))
            return value
        model.loss = loss
    monkeypatch.setattr(stage_module.StageSearch, "__init__", spy)
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out), "--class-weights", "enet", "--warmup", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    images = data.get_dataset("synthetic", "train", size=(32, 32), length=4)
    expected = class_weights("enet", *class_pixel_counts(images, 19, 255))
    assert summary["config"]["class_weights"] == "enet"
    assert summary["class_weights"] == pytest.approx(expected)
    assert len(losses) > 4
    for value, reference in losses:
        # BatchNorm in train mode sees the same batch twice: the same statistics, the same loss
        torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
