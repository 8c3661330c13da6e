import pytest
import torch

from flowfactory.pipeline import image_ids


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (the default init zeroes modulations, which hides bugs)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def flux_inputs(params, b: int, h: int, w: int, n_txt: int):
    """Random transformer inputs for an h x w token grid."""
    return dict(
        img=torch.randn(b, h * w, params.in_channels),
        img_ids=image_ids(b, h, w),
        txt=torch.randn(b, n_txt, params.context_in_dim),
        txt_ids=torch.zeros(b, n_txt, 3),
        timesteps=torch.rand(b),
        y=torch.randn(b, params.vec_in_dim),
        guidance=torch.rand(b) * 5 if params.guidance_embed else None,
    )
