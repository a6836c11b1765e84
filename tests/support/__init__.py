"""What tests share, in one package (as Starlette ships one test client): test modules never
import each other (tests/test_architecture.py checks), so what two of them use lives here.

- processes: REPO, MODELS, SECRET, ADMIN, base_env, free_port, ServerProc (a real `rewardloop
  serve`), server_starter, Procs (worker / beat processes), ctrl_c_stops_everything
- waiting: wait_for / wait_for_async, one poll-until for sync and async code; a timeout names
  what it waited for and adds the logs of the processes involved
- clients: http (JSON), get (a page), Chat (the websocket), openai_client
- redis_view: RedisView, the keys through core.keys.Keys and the reads tests make
- records: replies, events, rewards and a registry written as the services write them
- learner: replies the tiny model really sampled, written as the learner's input
- models: tiny models and adapters with known outputs (parrots)
- hotswap, browser, archive, devtools, vllm_servers: one area's helpers each
"""
