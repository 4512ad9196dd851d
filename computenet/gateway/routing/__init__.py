"""Engine-aware routing: which replica of a backend takes a request.

A routing policy is a pipeline: filters drop endpoints that must not take the
request, weighted scorers rate the rest from 0 to 1, and a picker takes the best
(random among ties). Everything here but the scraper and the KV-event subscriber
is pure, so the fleet simulator runs the same policies in virtual time.
"""
