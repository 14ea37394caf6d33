from rt_lab.compare.cli import main

main()
