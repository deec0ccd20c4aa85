"""A real camera: OpenCV (USB index or RTSP/HTTP URL) or picamera2 on a Raspberry Pi.

Both libraries are optional and imported on the source's own thread when it starts, so the agent
runs on a device that has neither as long as no camera source is configured.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field

from shared.image import encode_jpeg

from . import SOURCES, ImageItem, SourceContext, SourceSettings, ThreadedSource

logger = logging.getLogger(__name__)


class CameraSettings(SourceSettings):
    type: Literal["camera"] = "camera"
    backend: Literal["opencv", "picamera2"] = "opencv"
    device: str = Field("0", description="OpenCV index ('0') or URL (rtsp://...).")
    interval_s: Annotated[float, Field(gt=0)] = 300.0
    jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 90


class CameraCapture(ThreadedSource):
    def __init__(self, settings: CameraSettings, ctx: SourceContext) -> None:
        super().__init__(settings.name, ctx)
        self.settings = settings
        self.interval_s = settings.interval_s
        self._cap: Any = None
        self._cv2: Any = None

    def setup(self) -> None:
        self._open()

    def _open(self) -> None:
        s = self.settings
        try:
            if s.backend == "picamera2":
                from picamera2 import Picamera2  # type: ignore[import-not-found]

                cam = Picamera2()
                cam.configure(cam.create_still_configuration())
                cam.start()
                self._cap = cam
            else:
                import cv2  # type: ignore[import-not-found]

                self._cv2 = cv2
                device: int | str = int(s.device) if s.device.isdigit() else s.device
                cap = cv2.VideoCapture(device)
                if not cap.isOpened():
                    raise OSError(f"cannot open camera {s.device!r}")
                self._cap = cap
        except ModuleNotFoundError as exc:
            logger.error(
                "camera source %s needs %s (pip install opencv-python-headless, or picamera2 on a Pi)",
                self.name,
                exc.name,
            )
            self.ctx.count_error("camera_library_missing")
            self._cap = None
        except Exception:
            logger.exception("camera source %s cannot open %s", self.name, s.device)
            self.ctx.count_error("camera_open")
            self._cap = None

    def _grab(self) -> bytes | None:
        if self._cap is None:
            self._open()
            if self._cap is None:
                return None
        if self.settings.backend == "picamera2":
            frame = self._cap.capture_array()  # RGB already
            return encode_jpeg(frame[..., :3], quality=self.settings.jpeg_quality)
        ok, frame = self._cap.read()
        if not ok:
            logger.warning("camera %s returned no frame; reopening at the next interval", self.name)
            self.ctx.count_error("camera_read")
            self._cap.release()
            self._cap = None
            return None
        ok, buf = self._cv2.imencode(".jpg", frame, [self._cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        return bytes(buf) if ok else None

    def tick(self, requested: bool) -> None:
        data = self._grab()
        if data:
            self.ctx.submit(ImageItem(source=self.name, data=data, ref=f"camera://{self.name}", requested=requested))

    def teardown(self) -> None:
        if self._cap is None:
            return
        try:
            if self.settings.backend == "picamera2":
                self._cap.stop()
            else:
                self._cap.release()
        except Exception:
            logger.debug("camera close failed", exc_info=True)


SOURCES.register(CameraSettings, CameraCapture)
