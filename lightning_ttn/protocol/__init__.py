"""The paper's protocol: sweep files, the run store, the sweep runner, statistics, the report.

Import from the submodules. The schema, store, statistics and report import no Lightning.
"""
