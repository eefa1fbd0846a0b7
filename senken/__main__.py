from senken.cli import main

main()
