"""The app as `frankly serve` runs it, plus one bare endpoint for comparison (bench only)."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from frankly.config import get_settings
from frankly.main import create_app


class Bare(BaseModel):
    conversation_id: str
    message_id: str
    text: str


def build() -> FastAPI:
    app = create_app(get_settings())

    @app.post("/bare", status_code=202)
    async def bare(body: Bare) -> dict[str, str]:
        return {"message_id": body.message_id}

    return app


if __name__ == "__main__":
    uvicorn.run(build(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
