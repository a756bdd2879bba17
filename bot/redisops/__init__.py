"""Redis algorithms behind the diagnostic steps: pure async functions returning typed results.

One module per subject: :mod:`~bot.redisops.common` (one command, optional commands, SCAN batches,
key prefixes), :mod:`~bot.redisops.memory` (INFO memory figures, the memory report; how it measures
a batch is in :mod:`~bot.redisops.measure`), :mod:`~bot.redisops.traffic` (PING, SLOWLOG, LATENCY,
MONITOR), :mod:`~bot.redisops.clients` (CLIENT LIST) and :mod:`~bot.redisops.keyspace` (hit ratio,
idle time and TTLs). Import from the submodule; the names below are re-exported for older importers.

Connection errors and timeouts are not caught here; the steps translate them with
:func:`bot.redisconn.redis_errors`.
"""

from bot.redisops.clients import (
    QUEUE_BLOCKING_COMMANDS,
    ClientEntry,
    ClientsReport,
    clients_report,
    parse_client_list,
)
from bot.redisops.common import (
    NO_PREFIX,
    OTHER_PREFIXES,
    ProgressCallback,
    call,
    display_key,
    glob_escape,
    optional,
    read_info,
    scan_batch,
    to_jsonable,
)
from bot.redisops.keyspace import HitStats, KeyspaceReport, PrefixActivity, hit_stats, keyspace_report
from bot.redisops.memory import (
    ELEMENT_UNITS,
    BigKey,
    MemoryFigures,
    MemoryReport,
    PrefixMemory,
    TypeMemory,
    memory_figures,
    memory_report,
)
from bot.redisops.traffic import (
    DANGEROUS_COMMANDS,
    LatencyEvent,
    LatencyReport,
    MonitorClient,
    MonitorReport,
    PingStats,
    SlowlogEntry,
    SlowlogReport,
    format_command,
    latency_report,
    monitor_sample,
    ping_latency,
    shorten,
    slowlog,
)

__all__ = [
    "DANGEROUS_COMMANDS",
    "ELEMENT_UNITS",
    "NO_PREFIX",
    "OTHER_PREFIXES",
    "QUEUE_BLOCKING_COMMANDS",
    "BigKey",
    "ClientEntry",
    "ClientsReport",
    "HitStats",
    "KeyspaceReport",
    "LatencyEvent",
    "LatencyReport",
    "MemoryFigures",
    "MemoryReport",
    "MonitorClient",
    "MonitorReport",
    "PingStats",
    "PrefixActivity",
    "PrefixMemory",
    "ProgressCallback",
    "SlowlogEntry",
    "SlowlogReport",
    "TypeMemory",
    "call",
    "clients_report",
    "display_key",
    "format_command",
    "glob_escape",
    "hit_stats",
    "keyspace_report",
    "latency_report",
    "memory_figures",
    "memory_report",
    "monitor_sample",
    "optional",
    "parse_client_list",
    "ping_latency",
    "read_info",
    "scan_batch",
    "shorten",
    "slowlog",
    "to_jsonable",
]
