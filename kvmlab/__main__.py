from kvmlab.cli import main

main()
