"""`python -m servergroup` is the `servergroup` command."""

from servergroup.cli.main import main

if __name__ == "__main__":
    main()
