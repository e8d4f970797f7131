"""python -m precision_lab: the precision-lab command line."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="precision-lab")
