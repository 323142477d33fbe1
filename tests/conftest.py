"""Shared fixtures: tiny synthetic scans and a tiny untrained model, all made here, offline."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from brain_tumor.model import create_model, save_model

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def synthetic_slice(seed: int, size: int = 96, tumor: bool = True) -> np.ndarray:
    """A dark background, an elliptic 'head' with texture, and (optionally) a bright blob."""
    rng = np.random.default_rng(seed)
    head = np.zeros((size, size), np.uint8)
    c = size // 2 + int(rng.integers(-size // 12, size // 12 + 1))
    axes = (int(size * rng.uniform(0.3, 0.4)), int(size * rng.uniform(0.36, 0.45)))
    cv2.ellipse(head, (c, size // 2), axes, float(rng.uniform(-20, 20)), 0, 360, 1, -1)
    texture = cv2.GaussianBlur(rng.uniform(40, 160, (size, size)).astype(np.float32), (0, 0), size / 16)
    texture = (texture - texture.mean()) * 4 + 110
    img = np.clip(texture, 30, 200).astype(np.uint8) * head
    if tumor:
        x, y = rng.integers(int(size * 0.35), int(size * 0.65), 2)
        cv2.circle(img, (int(x), int(y)), max(3, size // 10), 230, -1)
    return img


def write_class_folders(root: Path, classes=CLASSES, per_class: int = 4, size: int = 96, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(classes):
        (root / c).mkdir(exist_ok=True)
        for i in range(per_class):
            img = synthetic_slice(seed + 100 * k + i, size, tumor=c not in ("notumor", "no"))
            cv2.imwrite(str(root / c / f"{c}_{i}.png"), img)
    return root


def briefly_trained_model(img_size: int = 64, output_stride: int = 32):
    """An untrained 4-class ResNet18 given five SGD steps on synthetic slices, so that its heat maps are not those
    of a random network; in eval mode, no gradients."""
    import torch

    from brain_tumor.preprocess import to_tensor

    torch.manual_seed(3)
    m = create_model(CLASSES, init="scratch", img_size=img_size, output_stride=output_stride).eval()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    x = to_tensor(np.stack([synthetic_slice(i, img_size, tumor=i % 2 == 0) for i in range(16)]))
    y = torch.tensor([i % 2 * 2 for i in range(16)])
    m.train()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained 4-class ResNet18 at 64 px saved as a model folder."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    model = create_model(CLASSES, init="scratch", img_size=64)
    save_model(model.eval(), folder)
    return folder


@pytest.fixture()
def class_folders(tmp_path) -> Path:
    return write_class_folders(tmp_path / "data")


def dicom_dataset(patient_name: str, patient_id: str, sop=None, syntax=None, modality: str = "MR"):
    """A pydicom Dataset with its file meta, SOP identity, modality and patient fields (for the tests' DICOM
    writers: each adds its own pixels and geometry)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop or MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = modality, patient_name, patient_id
    return ds
