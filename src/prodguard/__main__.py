from prodguard.cli import main

main()
