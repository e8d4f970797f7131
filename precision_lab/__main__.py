"""python -m precision_lab: the precision-lab command line."""

from precision_lab.cli import app

if __name__ == "__main__":
    app(prog_name="precision-lab")
