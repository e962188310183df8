"""Core: params.yaml -> typed configs, errors naming file/line/field, atomic I/O, CPU pinning, precision, process groups. Imports nothing else of tsrec."""
