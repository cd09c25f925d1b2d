"""Run the unchanged API (`service.__main__`) on uvloop's event loop, to measure what switching loops would gain.

`python -m bench._uvloop_service` takes the same NAS_* settings as
`python -m service`. It only sets uvloop's event loop policy before the
service's own `asyncio.run` starts. Needs uvloop (`pip install uvloop`).
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from service.__main__ import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main([]))
