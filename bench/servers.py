"""The two webhook servers under load, each run as its own process:

    python -m bench.servers bot CONFIG PORT       the real bot: create_app(config), no Slack
    python -m bench.servers baseline DB PORT      a bare aiohttp + SQLite handler, no validation

Both print ``ready`` once listening and stop cleanly on SIGTERM. The baseline is the least a
webhook that persists before answering can do: parse the JSON, INSERT OR IGNORE each alert in one
transaction (WAL, synchronous=NORMAL like the bot), answer 200. It runs SQLite on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path

from aiohttp import web


def baseline_app(db: Path) -> web.Application:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS alerts (fingerprint TEXT, starts_at TEXT, status TEXT, labels TEXT,"
        " PRIMARY KEY (fingerprint, starts_at))"
    )

    async def alerts(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO alerts VALUES (?,?,?,?)",
            [(a["fingerprint"], a["startsAt"], a["status"], json.dumps(a["labels"])) for a in data["alerts"]],
        )
        conn.execute("COMMIT")
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/alerts", alerts)

    async def close(app: web.Application) -> None:
        conn.close()

    app.on_cleanup.append(close)
    return app


def bot_app(config_path: Path) -> web.Application:
    from bot.app import create_app
    from bot.config import load_config

    app = create_app(load_config(config_path), webhook_token="")
    from bot.app import tune_runtime

    tune_runtime()  # as `serve` does
    return app


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    kind, path, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    app = bot_app(path) if kind == "bot" else baseline_app(path)
    asyncio.run(serve(app, port))


if __name__ == "__main__":
    main()
