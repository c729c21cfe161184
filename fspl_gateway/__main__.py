from fspl_gateway.entry import main

main()
