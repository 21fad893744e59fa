"""``python -m rspnet.rescale``: the searched choices kept, the asked widths
and settings changed, the costs printed for both, bad requests refused with
nothing written."""
import json

import pytest

from rspnet.architecture import Architecture
from rspnet.models import RSPNet, count_flops, count_params
from rspnet.rescale import main
from tests.helpers.architectures import fixed_architecture


@pytest.fixture
def searched(tmp_path):
    path = tmp_path / "architecture.json"
    fixed_architecture().save(path)
    return path


def test_rescale_keeps_the_search_and_changes_the_widths(searched, tmp_path, capsys):
    out = tmp_path / "final.json"
    assert main(["--arch", str(searched), "--out", str(out), "--scale-channels", "12,20,28,36", "--rsp-ratio", "0.25",
                 "--pool-first", "--head", "light", "--head-channels", "16", "--classes", "5"]) == 0
    before, after = Architecture.load(searched), Architecture.load(out)
    assert (after.cell, after.layers, after.nodes) == (before.cell, before.layers, before.nodes)
    assert after.widths == (12, 20, 28, 36) and after.channels == 12 and after.rsp_ratio == 0.25
    assert after.pool_first and after.head == "light" and after.head_channels == 16
    assert after.search["seed"] == before.search["seed"]
    assert after.search["rescaled"]["changes"]["scale_channels"] == [12, 20, 28, 36]
    printed = capsys.readouterr().out
    for name, arch in (("before", before), ("after", after)):
        model = RSPNet(arch, 5).eval()
        line = next(l for l in printed.splitlines() if l.startswith(name))
        assert f"{count_params(model) / 1e6:.3f} M params" in line
        assert f"{count_flops(model, (64, 128)) / 1e9:.3f} GFLOPs" in line
    # --channels alone doubles again from F
    again = tmp_path / "again.json"
    assert main(["--arch", str(out), "--out", str(again), "--channels", "6"]) == 0
    assert Architecture.load(again).widths == (6, 12, 24, 48)


@pytest.mark.parametrize("argv, message", [
    (["--channels", "8", "--scale-channels", "8,16,32,64"], "not both"),
    (["--rsp-ratio", "1.5"], "rsp.ratio: expected a number in (0, 1)"),
    (["--scale-channels", "8,16,32"], "widths.scale_channels: needs one width per scale (4)"),
    (["--scale-channels", "4,16,32,64", "--rsp-ratio", "0.1"], "rsp: at scale 0 (4 channels)"),
])
def test_impossible_rescales_are_refused_and_write_nothing(searched, tmp_path, capsys, argv, message):
    out = tmp_path / "final.json"
    with pytest.raises(SystemExit) as info:
        main(["--arch", str(searched), "--out", str(out)] + argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_single_path_has_no_paths_to_pool_and_out_is_not_replaced(tmp_path, capsys):
    single = tmp_path / "single.json"
    fixed_architecture(layers=None, nodes=None).save(single)
    with pytest.raises(SystemExit):
        main(["--arch", str(single), "--out", str(tmp_path / "x.json"), "--pool-first"])
    assert "needs a trellis" in capsys.readouterr().err
    out = tmp_path / "final.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        main(["--arch", str(single), "--out", str(out), "--channels", "6"])
    assert "exists" in capsys.readouterr().err and json.loads(out.read_text()) == {}
    assert main(["--arch", str(single), "--out", str(out), "--channels", "6", "--force"]) == 0
    assert Architecture.load(out).channels == 6
