"""The forced backend of rspnet.ops._backend: override() and forced()."""
import pytest
import torch

from rspnet.ops import _backend, mixed_sum


def test_forced_sets_and_restores():
    before = _backend.override()
    with _backend.forced("reference"):
        assert _backend.override() == "reference"
        assert _backend.select("mixed_sum", torch.ones(2), None) == "reference"
        with _backend.forced(None):
            assert _backend.override() is None
        assert _backend.override() == "reference"
    assert _backend.override() == before


def test_forced_restores_after_an_error():
    before = _backend.override()
    with pytest.raises(KeyError):
        with _backend.forced("reference"):
            raise KeyError("inside")
    assert _backend.override() == before


def test_forced_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        with _backend.forced("tpu"):
            pass


def test_override_reads_the_current_setting():
    outside = _backend.override()
    with _backend.forced("reference"):
        assert _backend.override() == "reference"
    assert _backend.override() == outside


@pytest.mark.skipif(not _backend.has_kernel("mixed_sum", "CPU"), reason="rspnet._C not built")
def test_compiled_code_follows_forced_without_graph_breaks():
    """torch.compile guards the forced backend: a change recompiles (once),
    and the old graph is reused when the setting is back."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    f = torch.compile(lambda w, xs: mixed_sum(w, xs), backend=backend, fullgraph=True)
    w, xs = torch.randn(2, dtype=torch.float64), [torch.randn(5, dtype=torch.float64) for _ in range(2)]
    with _backend.forced(None):
        f(w, xs)
        with _backend.forced("reference"):
            torch.testing.assert_close(f(w, xs), w[0] * xs[0] + w[1] * xs[1])
        f(w, xs)
    assert len(graphs) == 2
    assert "rspnet.mixed_sum" in graphs[0] and "rspnet" not in graphs[1]
