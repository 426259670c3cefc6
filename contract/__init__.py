"""The records that cross a process boundary between labq's scheduler and its
workers: what an attempt is given (:class:`AttemptTask`), what it gives back
(:class:`WorkerResult`), and what a node still holds of it (:class:`AttemptTrace`).

Both sides import this package and nothing else of each other, so the
scheduler never imports ``workers`` and ``workers`` never imports the
scheduler.  Each record has an explicit ``to_json``/``from_json`` (as Ray Jobs'
``JobInfo`` does): that is what travels through Ray and what ``result.json``
holds, so an older worker and a newer scheduler still read each other.
"""
