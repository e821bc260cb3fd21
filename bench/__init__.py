"""mmkp-bench: latency, throughput, size and keyphrase agreement of exported bundles (and the torch
student they came from) on one fixed workload, with the machine's memory-bandwidth floor beside them.

Users pick an edge package for speed and size, so both are measured in one run on one machine and
printed for people (an aligned table, a PNG plot) and for machines (one JSON line). The parts:
workload (the posts), timing (the runtime's steppable generator, timed), torch_baseline (the same
posts through transformers `generate`), floor (bytes per decode step ÷ measured bandwidth),
agreement (keyphrases of every variant vs the first), report, make_model, cli.
"""
