from fspl_gateway.cli import main

main()
