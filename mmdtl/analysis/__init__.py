"""What the tools in ``tools/analysis/`` measure, importable: benchmark models
and training steps, memory scaling, comparisons with the release and between
revisions. The scripts only parse arguments and call these modules."""
