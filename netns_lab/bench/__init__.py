"""The bench behind `netns-lab bench` (netns_lab/commands/bench.py): the lesson's performance claims measured side by side, every mode against direct routing.

Modules: config (presets, --services), topo (bench topology and services), labs (bring-up and
teardown), measure (iperf3, /proc/stat, the connection client), conn (client and server run in
the namespaces), services (programming N services, timed), bpfcost (BPF_PROG_TEST_RUN per-packet
cost), runner (the run), stats / report (figures, ratios, targets, tables), plot (the PNG),
rrtool + rr.c (the TCP_RR/TCP_CRR tool, compiled at run time), scale (`bench --scale`: the lab at size).
"""
