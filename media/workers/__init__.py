"""Media workers: the SFU of a node as several processes behind one seam (docs/workers.md).

:mod:`~media.workers.protocol` (the frames), :mod:`~media.workers.channel` (one
end of the socket), :mod:`~media.workers.process` (the worker's entry point),
:mod:`~media.workers.link` (the front's end of one worker),
:mod:`~media.workers.pool` (the :class:`~media.seam.SfuEndpoint` over all of
them) and :mod:`~media.workers.metrics` (their samples on the front's ``/metrics``).
"""
