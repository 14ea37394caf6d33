"""rt_lab entry point: `python launch.py [-m] key=value ...` (see README); the same as `rt-lab run`."""

from rt_lab.launch import main

if __name__ == "__main__":
    main()
