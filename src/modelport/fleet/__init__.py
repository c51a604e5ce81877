"""A device fleet on Ray: nodes advertise the profiles they can run as Ray resources, conversions run once,
each profile's bundle travels through Ray's object store (hash-checked on arrival) and is benchmarked only on a
node that advertises that profile, one benchmark per node at a time; the rows come back per machine and are
merged into one report. Ray is an optional extra (``pip install 'modelport[fleet]'``): nothing here imports it at
module level, so the rest of modelport works without it.

Modules: ``node`` (what a machine advertises; ``ray start`` command lines), ``cluster`` (connecting, status),
``tasks`` (what runs on a node), ``bench`` (one bench over the cluster, faults and cache), ``sweep`` (a sweep
whose benchmarks run on the cluster).
"""
