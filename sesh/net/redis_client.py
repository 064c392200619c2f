"""Sessions on Redis or Valkey (one server, or a Redis Cluster), behind the memcached client's interface.

Theory of operation. msm's logic (sticky and non-sticky, locks, CAS rebases) talks to a store node
through ``get`` / ``store(add|set|cas)`` / ``delete`` (see :class:`~sesh.net.memcache_client.NodeClient`);
:class:`RedisStore` offers the same calls on Redis, so that logic is not duplicated:

- **Values.** A key holds a hash ``{d: <value>, c: <cas token>}``. The CAS token is a random 62-bit
  number the writer picks (so a key deleted and added again never repeats one: no ABA). ``get`` is a
  script that answers the value and its token; a key holding anything else (a string, a list... not
  written by sesh) answers its raw text with token 0, which the session decoder counts and refuses.
- **Writes are one script** (``EVALSHA``, ``EVAL`` when the server does not have it yet): ``add``
  (only when absent), ``cas`` (only when the stored token is the one read: else ``EXISTS``, as
  memcached's ``cas``) or ``set``, then the TTL from the memcached exptime (relative seconds, absolute
  beyond 30 days, none for 0). Check, write and TTL are atomic on the server.
- **Replication before the answer.** Redis replicates asynchronously. A write is followed on the
  *same connection* (one pipeline) by ``WAIT n timeout``, ``n`` = ``--redis-wait-replicas`` capped at the
  live replicas the key's shard has (the cluster drops a failed replica from ``CLUSTER SLOTS``; a
  single server reports ``connected_slaves``). Fewer acknowledgements in time make the call fail with
  :class:`StoreUnavailable`: the caller answers 503, never a success a failover could lose.
- **Routing.** One server, or a Redis Cluster found from the seed URLs (``cluster_enabled:1``). The
  slot map comes from ``CLUSTER SLOTS``; one coredis client (connection pool) per node. The map is
  refreshed every second and whenever a call meets ``MOVED``, ``CLUSTERDOWN``, ``TRYAGAIN`` or a node
  that does not answer. Own routing rather than coredis' cluster client: the ``WAIT`` must follow the
  script on its connection, the wait count depends on the shard's live replicas, and a failover must be
  waited for within a bound, none of which its client exposes.
- **Live resharding.** While a slot migrates, its old owner answers ``ASK node`` for keys it no longer
  has: the call is sent once to that node after ``ASKING`` (on the same connection, one pipeline),
  and the slot map is left as it is (the old owner still serves the slot's other keys); once the
  migration ends, ``MOVED`` refreshes the map. ``TRYAGAIN`` (a multi-key call whose keys the
  migration split) is retried like ``MOVED``; a session's keys share its hash tag, and each script
  takes one key.
- **Failover.** While a slot's primary is dead and its replica not yet promoted, a call for that slot
  is retried against the refreshed map until ``--redis-failover-timeout``, then fails with
  :class:`StoreUnavailable`. Calls that cannot have run are retried (no connection, or the server
  refused to run them: ``MOVED``, ``CLUSTERDOWN``...). A write whose connection broke after it was sent
  may have landed: an ``add`` or ``cas`` is sent again to the slot's new owner, which is safe because
  the script recognises its own token (a landed first send answers STORED, without writing twice), and
  succeeds only if that answers STORED; anything else, and a ``set`` or ``delete``, fails (the caller
  answers 503). A read that fails makes the backend answer 503 too
  (:class:`~sesh.node.backend.SessionUnavailable`), never a fresh session while the old one may exist.

coredis runs its connection pools on anyio, which runs on trio; each pool lives in a task of
:meth:`RedisStore.run` (the backend's background work), started before the node serves.
"""

from __future__ import annotations

import binascii
import bisect
import contextlib
import hashlib
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import coredis
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.connection import TCPConnection
from coredis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from coredis.retry import NoRetryPolicy

from sesh.net.availability import Availability, AvailabilityTracked
from sesh.net.memcache_client import NodeClientStatistics, StoreError, StoreTimeout, StoreUnavailable
from sesh.net.redis_url import RedisOptions, RedisSetupError, RedisURL
from sesh.protocol.memcache_client import StoreCommand, Value

SLOTS = 16384
MAX_RELATIVE_EXPTIME = 30 * 24 * 3600  # memcached's rule, which the msm layer computes exptimes by
REFRESH_INTERVAL = 1.0  # the slot map and replica counts are read again this often
REFRESH_MIN_GAP = 0.05  # on demand (MOVED, a dead node), at most this often
RETRY_DELAY = 0.05  # between attempts while a slot fails over
MAX_CONNECTIONS = 16  # per node: requests pipeline over a few connections (coredis multiplexes)

_GET = """local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return false end
if t == 'hash' then
  local r = redis.call('HMGET', KEYS[1], 'd', 'c')
  if r[1] and r[2] then return r end
  return {'', '0'}
end
if t == 'string' then return {redis.call('GET', KEYS[1]), '0'} end
return {t, '0'}"""
# ARGV: command, value, new token, expected token, 'ex' | 'at' | '', seconds or Unix time
_STORE = """local k = KEYS[1]
local cmd = ARGV[1]
local t = redis.call('TYPE', k)['ok']
if cmd ~= 'set' then
  local c = false
  if t == 'hash' then c = redis.call('HGET', k, 'c') end
  if c == ARGV[3] then
    redis.call('HSET', k, 'c', ARGV[3])
    return 'STORED'
  end
  if cmd == 'add' then
    if t ~= 'none' then return 'NOT_STORED' end
  else
    if t == 'none' then return 'NOT_FOUND' end
    if (c or '0') ~= ARGV[4] then return 'EXISTS' end
  end
end
if t ~= 'hash' and t ~= 'none' then redis.call('DEL', k) end
redis.call('HSET', k, 'd', ARGV[2], 'c', ARGV[3])
if ARGV[5] == 'ex' then redis.call('EXPIRE', k, ARGV[6])
elseif ARGV[5] == 'at' then redis.call('EXPIREAT', k, ARGV[6]) end
return 'STORED'"""
# An add or cas that finds its own new token stored is this very write sent again after its connection
# broke (tokens are random and never reused): it had landed, so it answers STORED, writing the token
# again so that the WAIT after it covers the landed write. That makes a resent add / cas idempotent.
# The key is overwritten in place, never deleted first: while its slot is MIGRATING, a script may only
# touch keys that exist on the node, so a DEL then HSET would fail after the DEL and lose the session.
_DELETE = "return redis.call('DEL', KEYS[1])"
_SCRIPTS = {name: (text, hashlib.sha1(text.encode()).hexdigest()) for name, text in
            (("get", _GET), ("store", _STORE), ("delete", _DELETE))}


@dataclass(frozen=True, slots=True)
class RedisStoreStatistics(NodeClientStatistics):
    cluster: bool = False
    shards: int = 0
    replica_waits: int = 0  # writes acknowledged after WAIT
    unreplicated_writes: int = 0  # writes acknowledged without a replica (its shard had no live one)
    replica_timeouts: int = 0  # writes refused because too few replicas acknowledged them in time
    failover_waits: int = 0  # calls that waited for a slot to get a reachable primary
    refreshes: int = 0
    asks: int = 0  # calls redirected with ASK (their slot was being migrated)
    resends: int = 0  # add / cas sent again after their connection broke (idempotent: see _STORE)


@dataclass(frozen=True, slots=True)
class _Shard:
    start: int
    end: int
    primary: tuple[str, int]
    replicas: int  # live replicas


class _Connection(TCPConnection):
    """coredis' TCP connection, which closes its anyio memory streams when the connection attempt
    fails: coredis only closes them once connected, and each one left open prints a ResourceWarning
    when collected (one per attempt while a node is down)."""

    async def _connect(self) -> Any:
        try:
            return await super()._connect()
        except BaseException:
            for value in vars(self).values():
                if isinstance(value, MemoryObjectSendStream | MemoryObjectReceiveStream):
                    value.close()
            raise


class _Pool(coredis.ConnectionPool[Any]):
    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("connection_class") is TCPConnection:
            kwargs["connection_class"] = _Connection
        super().__init__(**kwargs)


def hash_slot(key: bytes) -> int:
    """Redis Cluster's key slot: CRC16 (XMODEM, which binascii.crc_hqx is) of the hash tag or key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


class _Retry(Exception):
    """The call did not run (no connection, MOVED, CLUSTERDOWN...): it may be tried again."""


class _Unsure(Exception):
    """A write whose connection broke after it was sent: it may have landed."""


class _Ask(Exception):
    """The call did not run: its slot is being migrated and the key is not (or no longer) on this
    node; ``ASKING`` and the call, once, on ``address`` (the slot map does not change)."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(f"ASK {address[0]}:{address[1]}")
        self.address = address


class RedisStore(AvailabilityTracked):
    """One logical store node backed by Redis (one server or a cluster). Calls raise
    :class:`StoreUnavailable` (:class:`StoreTimeout`) when the store fails and :class:`StoreError`
    when it refuses a request, like :class:`~sesh.net.memcache_client.NodeClient`."""

    def __init__(self, urls: Sequence[RedisURL], options: RedisOptions, *, node_id: str = "") -> None:
        if not urls:
            raise ValueError("at least one Redis URL is needed")
        self.urls = tuple(urls)
        self.options = options
        self.node_id = node_id
        self.operation_timeout = options.operation_timeout
        self.cluster = False
        self._clients: dict[tuple[str, int], coredis.Redis[bytes]] = {}
        self._starts: list[int] = []
        self._shards: list[_Shard] = []
        self._availability = Availability()
        self._refresh_wanted = trio.Event()
        self._refreshed = trio.Event()
        self._ssl: ssl.SSLContext | None = None
        self._operations = 0
        self._timeouts = 0
        self._replica_waits = 0
        self._unreplicated = 0
        self._replica_timeouts = 0
        self._failover_waits = 0
        self._refreshes = 0
        self._asks = 0
        self._resends = 0
        self._map_read = -1e9  # trio time the slot map was last read

    # --- setup and the slot map -----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.urls[0].tls:
            return None
        o = self.options
        try:
            context = ssl.create_default_context(cafile=o.tls_ca_file or None)
            if o.tls_cert_file:
                context.load_cert_chain(o.tls_cert_file, o.tls_key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise RedisSetupError(f"--redis-tls-ca-file/--redis-tls-cert-file/--redis-tls-key-file: {exc}") from None
        # Cluster nodes announce IP addresses, which certificates rarely name; the CA still vouches.
        context.check_hostname = False
        return context

    def _make_client(self, host: str, port: int) -> coredis.Redis[bytes]:
        url = self.urls[0]
        return coredis.Redis(
            host=host,
            port=port,
            username=url.username,
            password=url.password,
            ssl_context=self._ssl,
            stream_timeout=self.options.operation_timeout,
            connect_timeout=self.options.operation_timeout,
            max_connections=MAX_CONNECTIONS,
            decode_responses=False,
            verify_version=False,
            connection_pool_cls=_Pool,
            retry_policy=NoRetryPolicy(),  # retries are ours: only calls that cannot have run, within a bound
        )

    async def _hold(self, address: tuple[str, int], *, task_status: trio.TaskStatus[None]) -> None:
        client = self._make_client(*address)
        try:
            async with client:
                self._clients[address] = client
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self._clients.get(address) is client:
                del self._clients[address]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the node clients and keep the slot map fresh; started once the seeds are checked."""
        self._ssl = self._ssl_context()
        async with trio.open_nursery() as nursery:
            for url in self.urls:
                await nursery.start(self._hold, (url.host, url.port))
            await self._discover()
            task_status.started()
            while True:
                with trio.move_on_after(REFRESH_INTERVAL):
                    await self._refresh_wanted.wait()
                self._refresh_wanted = trio.Event()
                with contextlib.suppress(RedisError, OSError, trio.TooSlowError):
                    await self._refresh(nursery)
                refreshed, self._refreshed = self._refreshed, trio.Event()
                refreshed.set()
                await trio.sleep(REFRESH_MIN_GAP)

    async def _discover(self) -> None:
        """Check every seed (credentials, TLS, cluster mode) and read the first slot map. A seed that
        cannot be reached is only logged by the caller's first failures; one that refuses us is fatal."""
        modes: dict[RedisURL, bool] = {}
        silent: list[RedisURL] = []
        for url in self.urls:
            client = self._clients[(url.host, url.port)]
            try:
                with trio.fail_after(self.options.operation_timeout):
                    info = await client.info("cluster")
            except (AuthenticationError, AuthorizationError) as exc:
                given = "no password was given" if url.password is None else "wrong user or password"
                raise RedisSetupError(
                    f"--memcached-nodes: {url} refused the connection: {given} ({exc}); put the right "
                    "user:password in the URL (redis://user:password@host:port)"
                ) from None
            except (RedisError, OSError, trio.TooSlowError) as exc:
                problem = _tls_problem(exc)
                if problem is not None:
                    hint = ("; if the server has no TLS, use redis://" if "did not complete" in problem
                            or "WRONG_VERSION" in problem else "")
                    raise RedisSetupError(
                        f"--redis-tls-ca-file: TLS with {url} failed: {problem}{hint}") from None
                if isinstance(exc, trio.TooSlowError) or "Connection lost" in str(exc):
                    silent.append(url)
                continue  # unreachable for now: the refresh loop keeps trying
            modes[url] = _int(info.get("cluster_enabled")) == 1
        if silent and not modes:
            url = silent[0]
            hint = "" if url.tls else "; if it is a TLS port, use rediss://"
            raise RedisSetupError(f"--memcached-nodes: {url} accepted the connection but gave no answer "
                                  f"(closed, or nothing in {self.options.operation_timeout:g}s){hint}")
        if len(self.urls) > 1:
            single = [str(url) for url, cluster in modes.items() if not cluster]
            if single:
                raise RedisSetupError(
                    f"--memcached-nodes: several redis:// URLs are the seeds of one Redis Cluster, but "
                    f"{single[0]} is not in cluster mode (cluster_enabled:0); give a single URL for one server"
                )
        self.cluster = any(modes.values()) or len(self.urls) > 1
        with contextlib.suppress(RedisError, OSError, trio.TooSlowError):
            await self._refresh(None)

    async def _refresh(self, nursery: trio.Nursery | None) -> None:
        """Read the slot map (cluster) or the replica count (one server) from the first node that answers."""
        self._refreshes += 1
        candidates = list(dict.fromkeys([s.primary for s in self._shards] + list(self._clients)))
        last: BaseException | None = None
        for address in candidates:
            client = self._clients.get(address)
            if client is None:
                continue
            try:
                with trio.fail_after(self.options.operation_timeout):
                    if not self.cluster:
                        info = await client.info("replication")
                        replicas = _int(info.get("connected_slaves"))
                        self._set_shards([_Shard(0, SLOTS - 1, address, replicas)])
                        return
                    slots = await client.cluster_slots()
            except (RedisError, OSError, trio.TooSlowError) as exc:
                last = exc
                continue
            shards = [
                _Shard(start, end, (str(nodes[0]["host"]), int(nodes[0]["port"])), len(nodes) - 1)
                for (start, end), nodes in slots.items()
                if nodes
            ]
            if nursery is not None:
                for address in {s.primary for s in shards} - set(self._clients):
                    await nursery.start(self._hold, address)
            self._set_shards(shards)
            self._map_read = trio.current_time()
            return
        if last is not None:
            raise last

    def _set_shards(self, shards: list[_Shard]) -> None:
        shards.sort(key=lambda s: s.start)
        self._shards = shards
        self._starts = [s.start for s in shards]

    def _shard_for(self, key: bytes) -> _Shard | None:
        slot = hash_slot(key)
        index = bisect.bisect_right(self._starts, slot) - 1
        if index < 0:
            return None
        shard = self._shards[index]
        return shard if shard.start <= slot <= shard.end else None

    async def _wait_refresh(self, deadline: float) -> None:
        refreshed = self._refreshed
        self._refresh_wanted.set()
        with trio.move_on_at(deadline):
            await refreshed.wait()

    # --- calls --------------------------------------------------------------------------------------

    async def _call(self, script: str, key: bytes, args: list[Any], *, write: bool) -> Any:
        probe = self._availability.admit()
        if probe is None:
            raise StoreUnavailable(self.node_id, f"marked down after: {self._availability.last_error}")
        self._operations += 1
        started = trio.current_time()
        deadline = started + (self.options.failover_timeout if self.cluster else 0.0)
        waited = False
        # An add or cas is idempotent (see _STORE): one whose connection broke is sent again, on a fresh
        # connection to the slot's (new) owner, and only STORED counts; any other answer may be about
        # the first send having landed, so the call then fails as unsure. A set is never resent: it
        # would overwrite a write made on top of a first send that had landed.
        resend = script == "store" and args[0] in ("add", "cas")
        unsure: _Unsure | None = None
        try:
            while True:
                shard = self._shard_for(key)
                client = self._clients.get(shard.primary) if shard is not None else None
                reason = "no node serves the key's slot"
                if client is not None and shard is not None:
                    try:
                        try:
                            result = await self._execute(client, shard, script, key, args, write=write)
                        except _Ask as ask:
                            result = await self._ask(ask.address, shard, script, key, args, write=write)
                    except _Retry as exc:
                        reason = str(exc)
                    except _Unsure as exc:
                        if not resend:
                            raise StoreUnavailable(self.node_id, str(exc)) from None
                        unsure, reason = exc, str(exc)
                        self._resends += 1
                    else:
                        if unsure is not None and _text(result) != "STORED":
                            raise StoreUnavailable(self.node_id, f"{unsure}; sent again, it answered "
                                                   f"{result!r}, which may be about the first send")
                        self._availability.succeeded()
                        return result
                if trio.current_time() >= deadline:
                    # One slot failing over is not the store being down: the other shards still serve,
                    # so only a store whose map cannot be read from any node is marked down.
                    if not self.cluster or trio.current_time() - self._map_read > 2 * REFRESH_INTERVAL:
                        self._availability.failed(reason)
                    raise StoreUnavailable(self.node_id, reason)
                if not waited:
                    waited = True
                    self._failover_waits += 1
                await self._wait_refresh(deadline)
                await trio.sleep(RETRY_DELAY)
        finally:
            self._availability.end_probe(probe)

    async def _ask(self, address: tuple[str, int], shard: _Shard, script: str, key: bytes, args: list[Any], *,
                   write: bool) -> Any:
        """The call on the node a slot is being migrated to (Redis Cluster's ASK redirection)."""
        self._asks += 1
        client = self._clients.get(address)
        if client is None:  # not a primary of the map we have: read it again, then retry the call
            self._refresh_wanted.set()
            raise _Retry(f"ASK to {address[0]}:{address[1]}, a node not in the slot map")
        target = next((s for s in self._shards if s.primary == address), shard)
        try:
            return await self._execute(client, target, script, key, args, write=write, asking=True)
        except _Ask:  # the target sends us back: the migration changed under us, so the map is stale
            self._refresh_wanted.set()
            raise _Retry("ASK redirection loop") from None

    async def _execute(
        self, client: coredis.Redis[bytes], shard: _Shard, script: str, key: bytes, args: list[Any], *, write: bool,
        asking: bool = False,
    ) -> Any:
        text, sha = _SCRIPTS[script]
        replicas = min(self.options.wait_replicas, shard.replicas) if write else 0
        wait_ms = max(1, round(self.options.wait_timeout * 1000))
        try:
            with trio.fail_after(self.options.operation_timeout + (self.options.wait_timeout if replicas else 0)):
                for attempt in range(2):
                    try:
                        async with client.pipeline(transaction=False) as pipe:
                            if asking:
                                pipe.asking()  # lets the importing node run the next command, once
                            if attempt == 0:
                                reply = pipe.evalsha(sha, keys=[key], args=args)
                            else:
                                reply = pipe.eval(text, keys=[key], args=args)
                            acked = pipe.wait(replicas, wait_ms) if replicas else None
                        result = await reply
                        count = await acked if acked is not None else 0
                        break
                    except NoScriptError:
                        continue  # not run: load it with EVAL
                else:
                    raise StoreError(f"store {self.node_id or '(default)'}: the server keeps forgetting scripts")
        except trio.TooSlowError:
            self._timeouts += 1
            if not write:
                raise _Retry(f"no answer within {self.options.operation_timeout:g}s") from None
            raise StoreTimeout(self.node_id, f"no answer within {self.options.operation_timeout:g}s") from None
        except AskError as exc:
            if not isinstance(exc, MovedError):
                raise _Ask(exc.node_addr) from None
            if not self.cluster:
                self.cluster = True  # a single URL that was unreachable at start turned out to be a cluster node
            self._refresh_wanted.set()
            raise _Retry(f"MOVED {exc}") from None
        except (ClusterDownError, TryAgainError, ReadOnlyError) as exc:
            # TRYAGAIN: a multi-key call whose keys are split by a slot migration (sesh's scripts take
            # one key each; a session's keys share its hash tag, so they never are).
            self._refresh_wanted.set()
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        except (AuthenticationError, AuthorizationError) as exc:
            raise StoreError(f"store {self.node_id or '(default)'}: refused: {exc}") from None
        except ResponseError as exc:
            if str(exc).startswith("LOADING"):
                raise _Retry(str(exc)) from None
            raise StoreError(f"store {self.node_id or '(default)'}: {exc}") from None
        except (RedisError, OSError) as exc:
            self._refresh_wanted.set()
            if not write or str(exc).startswith("Unable to establish"):
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            # The write may have run before the connection broke: not known to be stored.
            raise _Unsure(f"connection lost during a write: {exc}") from None
        if replicas:
            if count < replicas:
                self._replica_timeouts += 1
                raise StoreUnavailable(
                    self.node_id, f"write acknowledged by {count} of {replicas} replicas within "
                    f"{self.options.wait_timeout:g}s (--redis-wait-timeout)")
            self._replica_waits += 1
        elif write and self.options.wait_replicas:
            self._unreplicated += 1
        return result

    # --- operations (NodeClient's) ------------------------------------------------------------------

    async def get(self, key: bytes) -> Value | None:
        reply = await self._call("get", key, [], write=False)
        if reply is None:
            return None
        value, token = reply[0], reply[1]
        return Value(key, 0, bytes(value), int(token))

    async def store(
        self, command: StoreCommand, key: bytes, value: bytes, exptime: int, *, cas_unique: int | None = None
    ) -> str:
        if command not in ("add", "set", "cas"):
            raise StoreError(f"store {self.node_id or '(default)'}: {command} is not used with Redis")
        if exptime < 0:
            raise StoreError(f"store {self.node_id or '(default)'}: negative exptime {exptime}")
        mode = "" if exptime == 0 else ("at" if exptime > MAX_RELATIVE_EXPTIME else "ex")
        token = secrets.randbits(62) | 1  # never 0: that is the token of a value sesh did not write
        args = [command, value, str(token), str(cas_unique or 0), mode, str(exptime)]
        return _text(await self._call("store", key, args, write=True))

    async def delete(self, key: bytes) -> bool:
        return bool(await self._call("delete", key, [], write=True))

    async def aclose(self) -> None:
        """The clients close with :meth:`run`'s nursery."""

    def statistics(self) -> RedisStoreStatistics:
        a = self._availability
        address = ",".join(f"{u.host}:{u.port}" for u in self.urls)
        return RedisStoreStatistics(
            node_id=self.node_id,
            address=address,
            available=self.available(),
            connections=len(self._clients),
            operations=self._operations,
            failures=a.failures,
            timeouts=self._timeouts,
            consecutive_failures=a.in_row,
            recoveries=a.recoveries,
            last_error=a.last_error,
            cluster=self.cluster,
            shards=len(self._shards),
            replica_waits=self._replica_waits,
            unreplicated_writes=self._unreplicated,
            replica_timeouts=self._replica_timeouts,
            failover_waits=self._failover_waits,
            refreshes=self._refreshes,
            asks=self._asks,
            resends=self._resends,
        )


def _text(reply: object) -> str:
    return bytes(reply).decode() if isinstance(reply, bytes) else str(reply)


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _tls_problem(exc: BaseException) -> str | None:
    """The TLS failure behind ``exc`` (certificate, handshake, plain text on a TLS port), if any."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return str(seen)
        text = str(seen)
        if "SSL" in text or "certificate" in text or "TLS" in text:
            return text
        seen = seen.__cause__ or seen.__context__
    return None
