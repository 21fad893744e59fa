"""Each setting defined once (``rspnet.engine.settings``): every config field
has exactly one flag and is in the provenance a run keeps; ``--config`` reads
JSON, YAML, a run's own record and named presets, with flags overriding; a
run's saved config reproduces it; the preset 'light' writes what the
two-command recipe (search, then rescale) writes."""
import dataclasses
import json

import pytest

from rspnet.architecture import Architecture
from rspnet.engine.settings import flag_name, load_config, preset_names
from rspnet.rescale import main as rescale_main
from rspnet.search import SearchConfig
from rspnet.search.__main__ import build_parser as search_parser
from rspnet.search.__main__ import main as search_main
from rspnet.train import TrainConfig
from rspnet.train.__main__ import build_parser as train_parser

TINY = ["--size", "32x32", "--images", "8", "--batch-size", "2", "--epochs", "1", "--channels", "4",
        "--layers", "2", "--no-progress", "--threads", "1"]


def _flags_of(parser):
    return {action.dest: action.option_strings for action in parser._actions}


@pytest.mark.parametrize("config_type, parser", [(SearchConfig, search_parser), (TrainConfig, train_parser)])
def test_every_config_field_has_exactly_one_flag(config_type, parser):
    flags = _flags_of(parser())
    for f in dataclasses.fields(config_type):
        negation = ["--no-" + flag_name(f.name)[2:]] if f.type in (bool, "bool", "bool | None") else []
        assert flags.get(f.name) == [flag_name(f.name), *negation], f.name
    owners = [dest for dest, options in flags.items() for o in options
              if o in {flag_name(f.name) for f in dataclasses.fields(config_type)}]
    assert sorted(owners) == sorted(f.name for f in dataclasses.fields(config_type))   # no second owner


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("settings") / "x"
    assert search_main(["--stage", "1", *TINY, "--arch-lr", "0.05", "--out", str(out)]) == 0
    return out


def test_the_provenance_lists_every_field(searched):
    summary = json.loads((searched / "summary.json").read_text())
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    assert set(summary["config"]) == fields
    search = Architecture.load(searched / "architecture.json").search
    assert set(search) >= fields and search["arch_lr"] == 0.05 and search["w_lr"] == SearchConfig.w_lr


def test_a_runs_summary_reproduces_its_architecture(searched, tmp_path):
    again = tmp_path / "again"
    assert search_main(["--stage", "1", "--config", str(searched / "summary.json"), "--no-progress",
                        "--threads", "1", "--out", str(again)]) == 0
    first = Architecture.load(searched / "architecture.json")
    second = Architecture.load(again / "architecture.json")
    assert first.to_dict()["cell"] == second.to_dict()["cell"] and first.fingerprint() == second.fingerprint()
    assert json.loads((again / "summary.json").read_text())["config"] == \
        json.loads((searched / "summary.json").read_text())["config"]


def test_flags_override_the_file_and_yaml_reads_the_same(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\nhead: light\nflops_budget: 1.5e8\nscale_channels: [8, 16, 32, 64]\n")
    values = load_config(SearchConfig, str(tmp_path / "a.yaml"), "search")
    assert values == {"epochs": 3, "head": "light", "flops_budget": 1.5e8, "scale_channels": (8, 16, 32, 64)}
    from rspnet.cli import config_of
    parser = search_parser()
    args = parser.parse_args(["--config", str(tmp_path / "a.yaml"), "--epochs", "5", "--flops-budget", "0.2"])
    config = config_of(parser, args, SearchConfig, "search")
    assert (config.epochs, config.head, config.flops_budget) == (5, "light", 0.2e9)
    assert config.scale_channels == (8, 16, 32, 64) and config.batch_size == SearchConfig.batch_size


@pytest.mark.parametrize("text, message", [
    ('{"epochs": 2, "epoks": 3}', "unknown setting(s) epoks"),
    ('{"epochs": "many"}', "epochs: expected int"),
    ('{"epochs": true}', "epochs: expected int"),
    ('{"size": 64}', "size: expected a list"),
    ('{"epochs": 2', "--config"),
    ('[1, 2]', "expected a mapping"),
    ('{"batch_size": null}', "batch_size: may not be null"),
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        search_main(["--config", str(path), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--config {path}" in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_presets_are_listed_and_a_missing_one_is_named(capsys):
    assert "light" in preset_names("search")
    assert "light" in search_parser().format_help()
    with pytest.raises(SystemExit):
        search_main(["--config", "no-such-preset"])
    assert "no such file or preset (presets: camvid, light)" in capsys.readouterr().err


def test_the_light_preset_writes_what_search_then_rescale_writes(tmp_path):
    """Tiny settings over the preset; the same search without the preset's
    rescale, then ``rspnet.rescale`` with the preset's widths."""
    tiny = ["--images", "8", "--size", "32x32", "--batch-size", "2", "--epochs", "1", "--layers", "2",
            "--no-progress", "--threads", "1"]
    preset = load_config(SearchConfig, "light", "search")
    assert search_main(["--config", "light", *tiny, "--out", str(tmp_path / "one")]) == 0
    by_hand = ["--channels", str(preset["channels"]), "--head", preset["head"],
               "--head-channels", str(preset["head_channels"]), "--flops-budget", str(preset["flops_budget"] / 1e9),
               "--param-budget", str(preset["param_budget"] / 1e6), "--param-penalty", str(preset["param_penalty"])]
    assert search_main([*by_hand, *tiny, "--out", str(tmp_path / "two")]) == 0
    assert rescale_main(["--arch", str(tmp_path / "two" / "architecture.json"), "--out", str(tmp_path / "r.json"),
                         "--scale-channels", ",".join(map(str, preset["rescale_channels"])),
                         "--rsp-ratio", str(preset["rescale_rsp_ratio"]), "--pool-first"]) == 0
    one = Architecture.load(tmp_path / "one" / "architecture.json")
    two = Architecture.load(tmp_path / "r.json")
    assert one.fingerprint() == two.fingerprint() and one.widths == (28, 56, 128, 256) and one.pool_first
    proxy = Architecture.load(tmp_path / "one" / "architecture-proxy.json")
    assert proxy.fingerprint() == Architecture.load(tmp_path / "two" / "architecture.json").fingerprint()


@pytest.mark.parametrize("text", ['{"w_lr": NaN}', '{"arch_betas": [0.5, Infinity]}', "w_lr: .inf\n"])
def test_a_config_file_may_not_hold_nan_or_infinity(tmp_path, text):
    path = tmp_path / ("c.yaml" if text.startswith("w_lr:") else "c.json")
    path.write_text(text)
    with pytest.raises(ValueError, match="must be finite"):
        load_config(SearchConfig, str(path), "search")


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default():
    """A stored config without a setting (written before the setting was
    added) ran with the setting's default: resuming at the default is no
    change, anything else is."""
    from rspnet.engine.config import changed_settings, plain
    from rspnet.search.config import SearchConfig

    saved = plain(SearchConfig())
    del saved["class_weights"]
    assert changed_settings(saved, SearchConfig()) == []
    assert changed_settings(saved, SearchConfig(class_weights="enet")) == [("class_weights", "none", "enet")]
    saved["epochs"] = 3
    assert changed_settings(saved, SearchConfig()) == [("epochs", 3, SearchConfig().epochs)]


def test_a_record_from_before_a_setting_existed_reproduces_its_default(tmp_path):
    """``--config`` with an old run's record that lacks a setting gets the
    setting's plain default (what that run computed), not the data-dependent
    default of a new command line: an old CamVid metrics.json with SGD's
    lr 0.05 and no ``optimizer`` must not become Adam at lr 0.05. A plain
    settings file lacking it still gets the command line's default, and
    machine settings (device) still follow the machine."""
    import argparse

    from rspnet.engine.config import plain
    from rspnet.engine.settings import config_from_args

    saved = plain(TrainConfig(data="camvid", lr=0.05))
    for name in ("optimizer", "class_weights", "augment", "device"):
        del saved[name]
    record = tmp_path / "metrics.json"
    record.write_text(json.dumps({"config": saved, "best_val_miou": 0.3}))
    old = config_from_args(TrainConfig, argparse.Namespace(), load_config(TrainConfig, str(record), "train"))
    assert (old.optimizer, old.lr, old.class_weights, old.augment) == ("sgd", 0.05, "none", False)
    assert old.device == config_from_args(TrainConfig, argparse.Namespace(), {"data": "camvid"}).device

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"data": "camvid", "epochs": 3}))
    new = config_from_args(TrainConfig, argparse.Namespace(), load_config(TrainConfig, str(settings), "train"))
    assert (new.optimizer, new.lr, new.class_weights, new.augment) == ("adam", 1e-3, "enet", True)
