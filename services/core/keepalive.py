"""The keepalive agreement between Aisle's gRPC clients and servers, in a module that imports nothing (so that a
process may read it before ``services.core.grpc_runtime`` has set gRPC's runtime up).

Clients ping an idle connection every ``KEEPALIVE_TIME_MS`` to find a dead peer (a node gone without a FIN) before
a call does; servers, Triton included, accept pings that often. gRPC's server default (no pings without calls, and
none within 5 minutes) answers such clients with GOAWAY "too_many_pings" about 90 s after the last call.
"""

#: How often a client pings an idle connection.
KEEPALIVE_TIME_MS = 30_000
#: The shortest interval between a client's pings on an idle connection a server accepts (below the above).
MIN_CLIENT_PING_INTERVAL_MS = 20_000
