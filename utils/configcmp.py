"""The former home of cli/configcmp.py: `python utils/configcmp.py RUN_A RUN_B` still runs it."""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parent.parent / "cli" / "configcmp.py"), run_name="__main__")
