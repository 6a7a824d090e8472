"""End-to-end benchmark: real load generators against a real origin, direct and through ytun.

``python -m benchmarks.e2e`` (from the repository root) runs everything on 127.0.0.1:

1. an origin of its own (``benchmarks/e2e/origin.py``, uvloop + httptools): ``GET /`` answers
   ``hello world\\n``, ``GET /bytes?n=N`` N bytes, ``POST /upload`` the length of the body;
2. ``ytun server`` and ``ytun client`` as subprocesses (``--log-level warning``); with
   ``--peers`` the built-in peers (``tls_peer``: ytun over TLS, ``ssh_peer``: a throw-away sshd
   and ``ssh -R``, ``nginx_peer``: one nginx proxy hop; a missing program skips its column,
   with the reason); with ``--peer-server/--peer-client`` another tunnel started from
   templates with the same values;
3. for every connection count (``--connections``, default 1,32,256,1000): wrk (or hey, or the
   built-in generator) for ``--duration`` seconds with keep-alive connections, then with a new
   connection per request, direct to the origin (the ceiling) and through each tunnel,
   interleaved per scenario so that machine noise hits every column alike;
4. a 100 MiB download and a 100 MiB upload with curl (median of 3) for each target;
5. the peak RSS (VmHWM) and CPU seconds (utime + stime) of each tunnel process.

Output (``--out``, default ``results/<time>/``): ``results.json``, ``results.md``, a chart
``results.png`` when matplotlib is installed, ``logs/`` (each process's output) and ``raw/``
(each load generator's output). ``--quick`` is the smoke test's tiny run. ``--help`` lists the
template placeholders. ``setup.sh`` installs wrk, hey, curl, OpenSSH and nginx.
"""
