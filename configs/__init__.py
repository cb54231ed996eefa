"""Config files: `python -m ardiff.main --config=configs/<name>.py[:runlocal]`.

Each file's get_config(arg) returns an ml_collections ConfigDict built on
ardiff/default_config.py; common.py holds what several share (the paper's preset, runlocal).
"""
