"""A camera that draws synthetic leaves: a demo farm and the tests run the whole pipeline with it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from shared.image import encode_jpeg

from . import SOURCES, ImageItem, SourceContext, SourceSettings, ThreadedSource
from .leafdraw import CONDITIONS, draw_leaf


class SimulatedCameraSettings(SourceSettings):
    type: Literal["simulated_camera"] = "simulated_camera"
    interval_s: Annotated[float, Field(gt=0)] = 60.0
    width: Annotated[int, Field(ge=32, le=8192)] = 640
    height: Annotated[int, Field(ge=32, le=8192)] = 480
    seed: int = 0
    count: Annotated[int, Field(ge=0)] | None = Field(None, description="Stop after this many images.")


class SimulatedCamera(ThreadedSource):
    def __init__(self, settings: SimulatedCameraSettings, ctx: SourceContext) -> None:
        super().__init__(settings.name, ctx)
        self.settings = settings
        self.interval_s = settings.interval_s
        self.taken = 0

    def tick(self, requested: bool) -> None:
        s = self.settings
        if s.count is not None and self.taken >= s.count and not requested:
            return
        seed = s.seed * 1_000_003 + self.taken
        condition = CONDITIONS[seed % len(CONDITIONS)]
        data = encode_jpeg(draw_leaf(s.width, s.height, condition, seed=seed), quality=90)
        self.taken += 1
        self.ctx.submit(
            ImageItem(
                source=self.name, data=data, ref=f"sim://{self.name}/{self.taken}/{condition}", requested=requested
            )
        )


SOURCES.register(SimulatedCameraSettings, SimulatedCamera)
