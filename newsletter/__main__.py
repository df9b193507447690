"""Allow ``python -m newsletter``."""

from newsletter.cli import main

if __name__ == "__main__":  # not when a spawned sender process (send --processes) imports it
    main()
