from diffalign.cli import main

main()
