"""python -m precision_lab: the precision-lab command line."""

from precision_lab.cli import main

if __name__ == "__main__":
    main()
