"""Write a small multi-level DICOM-WSI series (VL Whole Slide Microscopy Image Storage,
TILED_FULL, baseline JPEG frames) with pydicom: one file per level in one folder."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _jpeg(tile: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # 4:2:2 chroma subsampling, as PhotometricInterpretation YBR_FULL_422 says
    Image.fromarray(tile).save(buf, format="JPEG", quality=92, subsampling=1)
    return buf.getvalue()


def write_dicom_wsi(folder: Path, image: np.ndarray, *, mpp: float, tile: int = 256,
                    downsamples=(1, 4), name: str = "level") -> list[Path]:
    """Write ``image`` (H, W, 3) uint8 as a pyramid (``downsamples``) of DICOM files in
    ``folder``; returns the files (level 0 first)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_ref = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime(2024, 1, 2, 3, 4, 5)
    h0, w0 = image.shape[:2]
    files = []
    for k, ds_factor in enumerate(downsamples):
        h, w = h0 // ds_factor, w0 // ds_factor
        lvl = image[: h * ds_factor, : w * ds_factor].reshape(
            h, ds_factor, w, ds_factor, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        across, down = -(-w // tile), -(-h // tile)
        frames = []
        for ty in range(down):
            for tx in range(across):
                t = np.full((tile, tile, 3), 255, np.uint8)
                part = lvl[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]
                t[: part.shape[0], : part.shape[1]] = part
                frames.append(_jpeg(t))
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = VL_WSI
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = JPEG_BASELINE
        d = Dataset()
        d.file_meta = meta
        d.SOPClassUID, d.SOPInstanceUID = VL_WSI, sop
        d.StudyInstanceUID, d.SeriesInstanceUID = study, series
        d.FrameOfReferenceUID = frame_ref
        d.Modality = "SM"
        d.Manufacturer = "napari-mil tests"
        d.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if k == 0
                       else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        d.StudyDate = d.SeriesDate = d.ContentDate = now.strftime("%Y%m%d")
        d.StudyTime = d.SeriesTime = d.ContentTime = now.strftime("%H%M%S")
        d.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
        d.PatientName, d.PatientID = "Synthetic^Slide", "NMIL-0001"
        d.StudyID, d.AccessionNumber, d.ReferringPhysicianName = "1", "1", ""
        d.PatientBirthDate, d.PatientSex = "", "O"
        d.SeriesNumber, d.InstanceNumber = 1, k + 1
        d.ContainerIdentifier = "NMIL-SLIDE-1"
        d.SpecimenDescriptionSequence = Sequence([Dataset()])
        d.SpecimenDescriptionSequence[0].SpecimenIdentifier = "NMIL-SPECIMEN-1"
        d.SpecimenDescriptionSequence[0].SpecimenUID = generate_uid()
        d.DimensionOrganizationType = "TILED_FULL"
        d.DimensionOrganizationSequence = Sequence([Dataset()])
        d.DimensionOrganizationSequence[0].DimensionOrganizationUID = generate_uid()
        d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows = w, h
        d.TotalPixelMatrixFocalPlanes = 1
        d.NumberOfOpticalPaths = 1
        d.OpticalPathSequence = Sequence([Dataset()])
        d.OpticalPathSequence[0].OpticalPathIdentifier = "1"
        d.ImagedVolumeWidth = w * mpp * ds_factor / 1000.0
        d.ImagedVolumeHeight = h * mpp * ds_factor / 1000.0
        d.ImagedVolumeDepth = 0.001
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = 10.0
        origin.YOffsetInSlideCoordinateSystem = 20.0
        d.TotalPixelMatrixOriginSequence = Sequence([origin])
        d.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        pm = Dataset()
        spacing_mm = mpp * ds_factor / 1000.0
        pm.PixelSpacing = [spacing_mm, spacing_mm]
        pm.SliceThickness = 0.001
        pm.SpacingBetweenSlices = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([pm])
        d.SharedFunctionalGroupsSequence = Sequence([shared])
        d.Rows = d.Columns = tile
        d.NumberOfFrames = len(frames)
        d.SamplesPerPixel = 3
        d.PhotometricInterpretation = "YBR_FULL_422"
        d.PlanarConfiguration = 0
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 8, 8, 7, 0
        d.LossyImageCompression = "01"
        d.LossyImageCompressionRatio = 10.0
        d.LossyImageCompressionMethod = "ISO_10918_1"
        d.BurnedInAnnotation, d.SpecimenLabelInImage = "NO", "NO"
        d.FocusMethod, d.ExtendedDepthOfField = "AUTO", "NO"
        d.VolumetricProperties = "VOLUME"
        d.PixelData = encapsulate(frames)
        d["PixelData"].VR = "OB"
        path = folder / f"{name}{k}.dcm"
        d.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
