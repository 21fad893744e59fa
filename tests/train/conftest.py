"""What the training tests share: an architecture file, a second one that
differs from it in one op, and a 2-epoch run (session-scoped: built once for
every module of tests/train/)."""
import json

import pytest

from rspnet.train.__main__ import main
from tests.helpers.architectures import make_architecture
from tests.helpers.training import TINY


@pytest.fixture(scope="session")
def arch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "architecture.json"
    path.write_text(json.dumps(make_architecture(0)))
    return str(path)


@pytest.fixture(scope="session")
def other_arch_file(tmp_path_factory, arch_file):
    with open(arch_file) as f:
        arch = json.load(f)
    first = arch["cell"]["normal"][0]
    first["op"] = "sep_conv_3x3" if first["op"] != "sep_conv_3x3" else "dil_conv_3x3"
    path = tmp_path_factory.mktemp("arch") / "other.json"
    path.write_text(json.dumps(arch))
    return str(path)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, arch_file):
    """A 2-epoch run kept whole (--keep 0): the reference for resumption and
    the checkpoint that the evaluate/export tests use."""
    out = tmp_path_factory.mktemp("run")
    assert main(["--arch", arch_file, "--out", str(out), "--epochs", "2", "--val-every", "1",
                 "--keep", "0", *TINY]) == 0
    return out
