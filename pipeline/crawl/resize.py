"""The crawler's resizer: the bytes img2dataset's `Resizer` makes, at half its cost.

img2dataset decodes with OpenCV, mattes an alpha channel onto white, resizes through
albumentations (`LongestMaxSize` + `PadIfNeeded` for `border`, `SmallestMaxSize` (+ `CenterCrop`)
for `keep_ratio` and `center_crop`) and encodes with OpenCV. Building those albumentations
transforms anew for every image (their parameters are validated each time) is half of the work
per image. `Resizer` here does the same OpenCV calls with the same arithmetic: the same sizes
(rounded as albumentations rounds), the same interpolation (area down, Lanczos up), the same
centred white border and centred crop, the same encoder settings.
`tests/pipeline/crawl/test_resize.py` holds it to identical bytes against img2dataset's own class.

It handles what the web serves (8-bit grey, colour or colour with alpha); anything else (16-bit,
two channels) and any failure of its own goes to img2dataset's class, which then decides.
OpenCV's decoder can print warnings to stderr (libpng's, for instance); as in img2dataset,
file descriptors 1 and 2 point at /dev/null while it decodes, one decode at a time in the process
(the swap is process-wide), while resizing and encoding run in parallel.

OpenCV loads when a `Resizer` is made, not when this module is imported (recipe validation
imports the crawl stage and needs only the names above); img2dataset's class, and with it
albumentations (0.8 s to import), only when an image first needs it.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import threading
from typing import Any

import numpy as np

MODES = ("no", "keep_ratio", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")
_DECODE_LOCK = threading.Lock()
DECODE_ERROR = "Image decoding error"  # img2dataset's message for bytes OpenCV cannot decode

Result = tuple[bytes | None, int | None, int | None, int | None, int | None, str | None]


@functools.cache
def img2dataset_resizer_class() -> type:
    """img2dataset's `Resizer`, loaded from its own file: `import img2dataset.resizer` runs the
    package's __init__, which imports its whole downloader (Ray, webdataset and through it torch:
    seconds and a gigabyte) for one class that needs only cv2 and albumentations."""
    package = importlib.util.find_spec("img2dataset")  # locates the package without running it
    path = os.path.join(list(package.submodule_search_locations)[0], "resizer.py")
    spec = importlib.util.spec_from_file_location("foil_img2dataset_resizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Resizer


class _Quiet:
    """stdout and stderr on /dev/null for the duration (process-wide: hold `_DECODE_LOCK`)."""

    def __enter__(self) -> None:
        self.null = os.open(os.devnull, os.O_RDWR)
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in (self.null, *self.saved):
            os.close(fd)


class Resizer:
    """`Resizer(image_size, resize_mode, encode_format, encode_quality)(body)` ->
    (encoded bytes, width, height, original width, original height, error): img2dataset's
    `Resizer(..., resize_only_if_bigger=False)` call, for the same bytes the same result."""

    def __init__(self, image_size: int, resize_mode: str, encode_format: str, encode_quality: int):
        if resize_mode not in MODES:
            raise ValueError(f"resize_mode {resize_mode!r} is not one of {', '.join(MODES)}")
        if encode_format not in ENCODE_FORMATS:
            raise ValueError(f"encode_format {encode_format!r} is not one of {', '.join(ENCODE_FORMATS)}")
        import cv2

        flags = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "png": cv2.IMWRITE_PNG_COMPRESSION, "webp": cv2.IMWRITE_WEBP_QUALITY}
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.extension = f".{encode_format}"
        self.encode_format = encode_format
        self.encode_quality = encode_quality
        self.encode_params = [int(flags[encode_format]), int(encode_quality)]
        cv2.setNumThreads(1)  # as img2dataset sets it: threads of the crawl run resizes side by side

    def __call__(self, body: bytes) -> Result:
        import cv2

        buffer = np.frombuffer(body, np.uint8)
        with _DECODE_LOCK, _Quiet():
            img = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if img is None:
            return None, None, None, None, None, DECODE_ERROR
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
            return self._reference(body)
        try:
            return self._resize(img)
        except Exception:  # noqa: BLE001  (img2dataset's class has the last word on odd images)
            return self._reference(body)

    @functools.cached_property
    def reference(self) -> Any:
        """img2dataset's `Resizer` with the same settings, made the first time an image needs it."""
        return img2dataset_resizer_class()(
            image_size=self.image_size, resize_mode=self.resize_mode, resize_only_if_bigger=False,
            encode_quality=self.encode_quality, encode_format=self.encode_format,
        )

    def _reference(self, body: bytes) -> Result:
        with _DECODE_LOCK:  # it swaps file descriptors itself
            return self.reference(io.BytesIO(body), None)

    def _resize(self, img: np.ndarray) -> Result:
        import cv2

        if img.ndim == 3 and img.shape[2] == 4:  # alpha matting onto white, in img2dataset's float arithmetic
            alpha = img[:, :, 3, np.newaxis]
            img = np.rint((alpha / 255 * img[..., :3] + 255 - alpha).clip(min=0, max=255)).astype(np.uint8)
        original_height, original_width = img.shape[:2]
        size = self.image_size
        if self.resize_mode == "border":
            img = self._scale(img, size / max(original_height, original_width), max(original_height, original_width) > size)
            img = self._pad(img)
        elif self.resize_mode in ("keep_ratio", "center_crop"):
            img = self._scale(img, size / min(original_height, original_width), min(original_height, original_width) > size)
            if self.resize_mode == "center_crop":
                height, width = img.shape[:2]
                top, left = (height - size) // 2, (width - size) // 2
                img = img[top : top + size, left : left + size]
        height, width = img.shape[:2]
        encoded = cv2.imencode(self.extension, img, params=self.encode_params)[1].tobytes()
        return encoded, width, height, original_width, original_height, None

    @staticmethod
    def _scale(img: np.ndarray, scale: float, downscale: bool) -> np.ndarray:
        import cv2

        height, width = img.shape[:2]
        target = max(1, round(height * scale)), max(1, round(width * scale))
        if target == (height, width):
            return img
        interpolation = cv2.INTER_AREA if downscale else cv2.INTER_LANCZOS4
        return cv2.resize(img, (target[1], target[0]), interpolation=interpolation)

    def _pad(self, img: np.ndarray) -> np.ndarray:
        size = self.image_size
        height, width = img.shape[:2]
        if height >= size and width >= size:
            return img
        import cv2

        top = int((size - height) / 2.0) if height < size else 0
        left = int((size - width) / 2.0) if width < size else 0
        bottom = size - height - top if height < size else 0
        right = size - width - left if width < size else 0
        return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=[255, 255, 255])
