"""A camera that draws synthetic leaves: a demo farm and the tests run the whole pipeline with it."""

from __future__ import annotations

import logging

from shared.image import encode_jpeg

from . import ImageItem, SourceContext, ThreadedSource
from .leafdraw import CONDITIONS, draw_leaf

logger = logging.getLogger(__name__)


class SimulatedCamera(ThreadedSource):
    def __init__(self, settings, ctx: SourceContext) -> None:  # type: ignore[no-untyped-def]
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
