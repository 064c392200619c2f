"""Entry point of ``sesh store``: load the state file, serve until signalled, write the state file."""

from __future__ import annotations

import time
from functools import partial

import trio

from sesh.config import StoreConfig
from sesh.log import get_logger
from sesh.net.shutdown import Shutdown, run_role
from sesh.store.server import MIB, serve_store
from sesh.store.statefile import StateFileError, load_state, save_state
from sesh.store.storage import Storage

log = get_logger("store")

# In-flight commands are synchronous and short; idle connections end at once. This only bounds a
# reply that is still being written to a slow client.
SHUTDOWN_GRACE = 5.0
def run_store(cfg: StoreConfig) -> int:
    storage = Storage(cfg.memory_limit * MIB, now=int(time.time()), max_item_size=cfg.max_item_size)
    if cfg.state_file:
        try:
            loaded = load_state(cfg.state_file, storage, int(time.time()))
        except StateFileError as exc:
            log.warning("cannot read the state file, starting empty", path=cfg.state_file, error=str(exc))
        else:
            if loaded is not None:
                log.info("loaded the state file", items=loaded, path=cfg.state_file)

    async def role_main(shutdown: Shutdown) -> None:
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(serve_store, cfg, shutdown, storage=storage))
                print(f"sesh store listening on memcached://{cfg.listen}:{port}", flush=True)
        finally:
            if cfg.state_file:
                with trio.CancelScope(shield=True):
                    await _save(cfg.state_file, storage)

    return run_role(role_main, grace=SHUTDOWN_GRACE, name="sesh store")


async def _save(path: str, storage: Storage) -> None:
    now = int(time.time())
    items = storage.live_items(now)
    try:
        await trio.to_thread.run_sync(save_state, path, items, storage.last_cas)
    except OSError as exc:
        log.error("cannot write the state file", path=path, error=str(exc))
    else:
        log.info("saved the state file", items=len(items), path=path)
