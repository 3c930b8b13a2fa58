"""torchvision's architectures load next to the CPU torch, with random weights and no download."""

import pytest
import torch

from modelpress.errors import ConfigError
from modelpress.models.tv import torchvision_architecture, torchvision_models


def test_architecture_by_name_runs() -> None:
    m = torchvision_architecture("resnet18", num_classes=7).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert hasattr(torchvision_models(), "mobilenet_v2")


def test_unknown_architecture_names_close_ones() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        torchvision_architecture("resnet")


def test_transformers_imports_beside_this_torchvision() -> None:
    """transformers imports torchvision for its image utilities once it is installed; the
    import fallback (put in place by ``import modelpress``) keeps that working."""
    import subprocess
    import sys

    code = "import modelpress\nfrom transformers import BertModel\nimport torchvision.models\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
