"""The timm ResNet weights on the Hugging Face Hub (hf-hub:timm/NAME) of the architectures reslab builds, with the
top-1 timm publishes for them.

Source: huggingface/pytorch-image-models, results/results-imagenet.csv (the stored copy at commit
0173a139a2c66db3a41ebfe1d8ac4fb02483642e): columns model, top1, param_count (millions), img_size, crop_pct,
interpolation, for the ImageNet-1k validation set at img_size (often timm's test size, larger than the training
size: resnet50.a1_in1k trains at 224 and is measured at 288). Newer uploads (resnet50d.ra4_e3600_r224_in1k, ...)
are not in that copy: they load as any hf-hub: name does, without a published top-1 here. Every row is a
repository timm/NAME on the Hub (timm/models/resnet.py: hf_hub_id='timm/').
"""

from __future__ import annotations

from dataclasses import dataclass

from reslab.weights.table import IMAGENET_MEAN, IMAGENET_STD, natural_preprocess


@dataclass(frozen=True)
class TimmHubEntry:
    name: str  # timm's: ARCH.TAG
    top1: float  # %, ImageNet-1k validation, timm's own evaluation
    param_count_m: float  # parameters in millions, as timm's table rounds them
    img_size: int  # the size top1 is measured at
    crop_pct: float
    interpolation: str

    @property
    def id(self) -> str:
        return f"hf-hub:timm/{self.name}"

    @property
    def model(self) -> str:
        return self.name.split(".")[0]

    @property
    def preprocess(self) -> dict:
        """timm's eval transform at img_size: resize the shorter side to floor(img_size / crop_pct), centre-crop."""
        resize = int(self.img_size / self.crop_pct)
        return natural_preprocess(
            resize=resize,
            crop=self.img_size,
            mean=IMAGENET_MEAN,  # timm's _cfg for every ResNet here: IMAGENET_DEFAULT_MEAN / _STD
            std=IMAGENET_STD,
            interpolation=self.interpolation,
        )


# (model, top1, param_count, img_size, crop_pct, interpolation), in the CSV's order (by top-1)
_ROWS = [
    ("resnext101_32x32d.fb_wsl_ig1b_ft_in1k", 85.098, 468.53, 224, 0.875, "bilinear"),
    ("resnext101_32x8d.fb_swsl_ig1b_ft_in1k", 84.302, 88.79, 224, 0.875, "bilinear"),
    ("resnext101_32x16d.fb_wsl_ig1b_ft_in1k", 84.166, 194.03, 224, 0.875, "bilinear"),
    ("resnet200d.ra2_in1k", 83.964, 64.69, 320, 1.000, "bicubic"),
    ("resnet152d.ra2_in1k", 83.684, 60.21, 320, 1.000, "bicubic"),
    ("resnet152.a1h_in1k", 83.450, 60.19, 288, 1.000, "bicubic"),
    ("resnext101_32x16d.fb_swsl_ig1b_ft_in1k", 83.336, 194.03, 224, 0.875, "bilinear"),
    ("resnext101_32x4d.fb_swsl_ig1b_ft_in1k", 83.232, 44.18, 224, 0.875, "bilinear"),
    ("resnext101_64x4d.c1_in1k", 83.156, 83.46, 288, 1.000, "bicubic"),
    ("resnet101d.ra2_in1k", 83.016, 44.57, 320, 1.000, "bicubic"),
    ("resnext101_64x4d.tv_in1k", 82.992, 83.46, 224, 0.875, "bilinear"),
    ("resnext101_32x8d.tv2_in1k", 82.832, 88.79, 224, 0.965, "bilinear"),
    ("resnet101.a1h_in1k", 82.778, 44.55, 288, 1.000, "bicubic"),
    ("resnet152.a1_in1k", 82.732, 60.19, 288, 1.000, "bicubic"),
    ("resnext101_32x8d.fb_wsl_ig1b_ft_in1k", 82.698, 88.79, 224, 0.875, "bilinear"),
    ("resnet152.a2_in1k", 82.608, 60.19, 288, 1.000, "bicubic"),
    ("wide_resnet101_2.tv2_in1k", 82.498, 126.89, 224, 0.965, "bilinear"),
    ("resnet101.a1_in1k", 82.322, 44.55, 288, 1.000, "bicubic"),
    ("resnet152.tv2_in1k", 82.288, 60.19, 224, 0.965, "bilinear"),
    ("wide_resnet50_2.racm_in1k", 82.280, 68.88, 288, 0.950, "bicubic"),
    ("resnet101.a2_in1k", 82.236, 44.55, 288, 1.000, "bicubic"),
    ("resnext50_32x4d.fb_swsl_ig1b_ft_in1k", 82.174, 25.03, 224, 0.875, "bilinear"),
    ("resnext50_32x4d.a1h_in1k", 82.014, 25.03, 288, 1.000, "bicubic"),
    ("resnet101.tv2_in1k", 81.890, 44.55, 224, 0.965, "bilinear"),
    ("resnext101_32x16d.fb_ssl_yfcc100m_ft_in1k", 81.842, 194.03, 224, 0.875, "bilinear"),
    ("resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k", 81.606, 88.79, 224, 0.875, "bilinear"),
    ("wide_resnet50_2.tv2_in1k", 81.606, 68.88, 224, 0.965, "bilinear"),
    ("resnext50_32x4d.a1_in1k", 81.466, 25.03, 288, 1.000, "bicubic"),
    ("resnet50d.a1_in1k", 81.450, 25.58, 288, 1.000, "bicubic"),
    ("resnet50d.ra2_in1k", 81.356, 25.58, 288, 0.950, "bicubic"),
    ("resnext50_32x4d.a2_in1k", 81.304, 25.03, 288, 1.000, "bicubic"),
    ("resnet50.a1_in1k", 81.214, 25.56, 288, 1.000, "bicubic"),
    ("resnet50.fb_swsl_ig1b_ft_in1k", 81.182, 25.56, 224, 0.875, "bilinear"),
    ("resnext50_32x4d.tv2_in1k", 81.182, 25.03, 224, 0.965, "bilinear"),
    ("resnet50d.a2_in1k", 81.164, 25.58, 288, 1.000, "bicubic"),
    ("resnet152s.gluon_in1k", 81.002, 60.32, 224, 0.875, "bicubic"),
    ("resnet50.d_in1k", 80.972, 25.56, 288, 1.000, "bicubic"),
    ("resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k", 80.924, 44.18, 224, 0.875, "bilinear"),
    ("resnet50.c1_in1k", 80.912, 25.56, 288, 1.000, "bicubic"),
    ("resnet50.c2_in1k", 80.870, 25.56, 288, 1.000, "bicubic"),
    ("resnet50.tv2_in1k", 80.850, 25.56, 224, 0.965, "bilinear"),
    ("resnet50.a2_in1k", 80.772, 25.56, 288, 1.000, "bicubic"),
    ("resnet50.b1k_in1k", 80.706, 25.56, 288, 1.000, "bicubic"),
    ("resnext50_32x4d.ra_in1k", 80.698, 25.03, 288, 0.950, "bicubic"),
    ("resnet50.a1h_in1k", 80.676, 25.56, 224, 1.000, "bicubic"),
    ("resnext50d_32x4d.bt_in1k", 80.664, 25.05, 288, 0.950, "bicubic"),
    ("resnext101_64x4d.gluon_in1k", 80.600, 83.46, 224, 0.875, "bicubic"),
    ("resnet152.a3_in1k", 80.546, 60.19, 224, 0.950, "bicubic"),
    ("resnet152d.gluon_in1k", 80.476, 60.21, 224, 0.875, "bicubic"),
    ("resnet50.b2k_in1k", 80.454, 25.56, 288, 1.000, "bicubic"),
    ("resnet101d.gluon_in1k", 80.426, 44.57, 224, 0.875, "bicubic"),
    ("resnext101_32x4d.gluon_in1k", 80.340, 44.18, 224, 0.875, "bicubic"),
    ("resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k", 80.338, 25.03, 224, 0.875, "bilinear"),
    ("resnet101s.gluon_in1k", 80.302, 44.67, 224, 0.875, "bicubic"),
    ("resnet50.ram_in1k", 79.976, 25.56, 288, 0.950, "bicubic"),
    ("resnet152c.gluon_in1k", 79.910, 60.21, 224, 0.875, "bicubic"),
    ("resnet50.ra_in1k", 79.836, 25.56, 288, 0.950, "bicubic"),
    ("resnet101.a3_in1k", 79.814, 44.55, 224, 0.950, "bicubic"),
    ("resnet152.gluon_in1k", 79.694, 60.19, 224, 0.875, "bicubic"),
    ("resnet50.bt_in1k", 79.640, 25.56, 288, 0.950, "bicubic"),
    ("resnet101c.gluon_in1k", 79.542, 44.57, 224, 0.875, "bicubic"),
    ("resnext50_32x4d.gluon_in1k", 79.360, 25.03, 224, 0.875, "bicubic"),
    ("resnet101.gluon_in1k", 79.310, 44.55, 224, 0.875, "bicubic"),
    ("resnext101_32x8d.tv_in1k", 79.310, 88.79, 224, 0.875, "bilinear"),
    ("resnext50_32x4d.a3_in1k", 79.268, 25.03, 224, 0.950, "bicubic"),
    ("resnet50.fb_ssl_yfcc100m_ft_in1k", 79.234, 25.56, 224, 0.875, "bilinear"),
    ("resnet50d.gluon_in1k", 79.078, 25.58, 224, 0.875, "bicubic"),
    ("resnet50.am_in1k", 78.998, 25.56, 224, 0.875, "bicubic"),
    ("wide_resnet101_2.tv_in1k", 78.838, 126.89, 224, 0.875, "bilinear"),
    ("resnet50d.a3_in1k", 78.722, 25.58, 224, 0.950, "bicubic"),
    ("resnet50s.gluon_in1k", 78.718, 25.68, 224, 0.875, "bicubic"),
    ("wide_resnet50_2.tv_in1k", 78.480, 68.88, 224, 0.875, "bilinear"),
    ("resnet34d.ra2_in1k", 78.436, 21.82, 288, 0.950, "bicubic"),
    ("resnet26t.ra2_in1k", 78.332, 16.01, 320, 1.000, "bicubic"),
    ("resnet152.tv_in1k", 78.322, 60.19, 224, 0.875, "bilinear"),
    ("resnet50.a3_in1k", 78.048, 25.56, 224, 0.950, "bicubic"),
    ("resnet50c.gluon_in1k", 78.012, 25.58, 224, 0.875, "bicubic"),
    ("resnet34.a1_in1k", 77.918, 21.80, 288, 1.000, "bicubic"),
    ("resnext50_32x4d.tv_in1k", 77.618, 25.03, 224, 0.875, "bilinear"),
    ("resnet50.gluon_in1k", 77.580, 25.56, 224, 0.875, "bicubic"),
    ("resnet26d.bt_in1k", 77.408, 16.01, 288, 0.950, "bicubic"),
    ("resnet101.tv_in1k", 77.376, 44.55, 224, 0.875, "bilinear"),
    ("resnet34.a2_in1k", 77.158, 21.80, 288, 1.000, "bicubic"),
    ("resnet34.bt_in1k", 76.480, 21.80, 288, 0.950, "bicubic"),
    ("resnet26.bt_in1k", 76.366, 16.00, 288, 0.950, "bicubic"),
    ("resnet50.tv_in1k", 76.130, 25.56, 224, 0.875, "bilinear"),
    ("resnet34.gluon_in1k", 74.578, 21.80, 224, 0.875, "bicubic"),
    ("resnet18d.ra2_in1k", 73.794, 11.71, 288, 0.950, "bicubic"),
    ("resnet18.fb_swsl_ig1b_ft_in1k", 73.282, 11.69, 224, 0.875, "bilinear"),
    ("resnet18.a1_in1k", 73.158, 11.69, 288, 1.000, "bicubic"),
    ("resnet34.a3_in1k", 72.970, 21.80, 224, 0.950, "bicubic"),
    ("resnet18.fb_ssl_yfcc100m_ft_in1k", 72.594, 11.69, 224, 0.875, "bilinear"),
    ("resnet18.a2_in1k", 72.372, 11.69, 288, 1.000, "bicubic"),
    ("resnet14t.c3_in1k", 72.254, 10.08, 224, 0.950, "bicubic"),
    ("resnet18.gluon_in1k", 70.838, 11.69, 224, 0.875, "bicubic"),
    ("resnet18.tv_in1k", 69.760, 11.69, 224, 0.875, "bilinear"),
    ("resnet10t.c3_in1k", 68.358, 5.44, 224, 0.950, "bicubic"),
    ("resnet18.a3_in1k", 68.254, 11.69, 224, 0.950, "bicubic"),
]

TIMM_HUB_WEIGHTS: dict[str, TimmHubEntry] = {r[0]: TimmHubEntry(*r) for r in _ROWS}


def timm_hub_entry(repo_id: str) -> TimmHubEntry | None:
    """The table's row for a Hub repository ("timm/resnet50.a1_in1k"), or None."""
    org, _, name = repo_id.partition("/")
    return TIMM_HUB_WEIGHTS.get(name) if org == "timm" else None


def list_timm_hub(filter: str = "") -> list[TimmHubEntry]:
    """The rows whose name contains `filter`, by architecture (as `reslab models` orders them), then by top-1."""
    f = filter.lower()
    rows = [e for e in TIMM_HUB_WEIGHTS.values() if f in e.id.lower()]
    return sorted(rows, key=lambda e: (e.model, -e.top1))
