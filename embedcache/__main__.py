"""`python -m embedcache ...` (and `torchrun ... -m embedcache extract ...`) runs the CLI."""

from embedcache_cli.main import main

if __name__ == "__main__":
    main()
