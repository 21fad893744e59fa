"""The one inference path (``rspnet.engine.scoring``) against a plain
reference: pad with the mean colour to a multiple of 32, run, crop; and the
same class map from evaluate and predict for one image and checkpoint."""
import torch
import torch.nn.functional as F

from rspnet.engine.scoring import MULTIPLE, class_probabilities, class_scores, padded_size


class StrideModel(torch.nn.Module):
    """A model that, like RSPNet, only takes inputs divisible by 32, and
    whose output depends on the neighbourhood (so padding shows)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 5, padding=2)

    def forward(self, x):
        assert x.shape[-2] % MULTIPLE == 0 and x.shape[-1] % MULTIPLE == 0, x.shape
        return self.conv(x)


def test_padded_size_rounds_up_to_the_stride():
    assert padded_size(360, 480) == (384, 480) and padded_size(32, 1) == (32, 32)


def test_class_scores_pad_with_zeros_and_crop_back():
    model = StrideModel().eval()
    x = torch.randn(2, 3, 45, 70)
    ref = model(F.pad(x, (0, 96 - 70, 0, 64 - 45)))[..., :45, :70]   # zeros: the mean colour
    torch.testing.assert_close(class_scores(model, x), ref)


def test_class_scores_keep_float64():
    model = StrideModel().double().eval()
    assert class_scores(model, torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_class_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(2, 3, 64, 96)
    single = class_probabilities(model, x, (64, 96))
    torch.testing.assert_close(single, model(x).softmax(1))
    multi = class_probabilities(model, x, (32, 48), scales=(0.5, 1.0, 1.5), flip=True)
    assert multi.shape == (2, 4, 32, 48)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 32, 48))
    # flip averaging of a flip-symmetric model changes nothing
    sym = torch.nn.Conv2d(3, 4, (1, 3), padding=(0, 1), bias=False).eval()
    with torch.no_grad():
        sym.weight.copy_(sym.weight + sym.weight.flip(-1))
    torch.testing.assert_close(class_probabilities(sym, x, (64, 96), flip=True),
                               class_probabilities(sym, x, (64, 96)), atol=1e-6, rtol=0)


def test_a_scale_resizes_then_pads():
    model = StrideModel().eval()
    x = torch.randn(1, 3, 40, 50)
    up = F.interpolate(x, size=(60, 75), mode="bilinear", align_corners=False)
    scores = model(F.pad(up, (0, 96 - 75, 0, 64 - 60)))[..., :60, :75]
    ref = F.interpolate(scores, size=(40, 50), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(class_probabilities(model, x, scales=(1.5,)), ref)
