"""Softmax unit: rows of Q.12 INT32 scores to INT8 Q.7 probabilities, bit for bit ``quant.softmax.int_softmax``.

Three stages work on three rows at once, each row in its own region of the row buffer
(``ROW_BUFFERS`` regions), each stage handing its row on when the next one is free:

load stage
    ``LOAD``: one beat of ``lanes`` scores per cycle into the row's region, keeping the
    running maximum; ``HOLD`` until taken.
exponential stage
    ``EXP``: each beat is read back, ``int_exp(x - max)`` is computed in a 4-stage pipeline
    after the read, written back over the score (the buffer's second write port) and added to
    the row total; ``HOLD`` until taken.
output stage
    ``DIVIDE``: ``recip = 2**30 // total`` on the radix-4 divider (31 quotient bits, 17 cycles),
    issued on the edge that takes the row; ``OUT``: each beat of exponentials is read again
    and ``sat8(round(e * recip / 2**23))`` streamed out.

So a row loads while the one before it exponentiates and the one before that divides and
streams out. One divider serves: only the output stage divides, one division a row.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError
from intvit.quant.requant import INT32_MIN
from intvit.quant.softmax import (
    EXP_DIV_MULT, EXP_DIV_SHIFT, EXP_LN2, EXP_N_MAX, EXP_POLY_A, EXP_POLY_A_SHIFT, EXP_POLY_B, EXP_POLY_C,
    SOFTMAX_INPUT_FRAC_BITS, SOFTMAX_OUTPUT_FRAC_BITS, SOFTMAX_RECIP_BITS,
)
from intvit.rtl.divider import Divider, divider_cycles
from intvit.rtl.multiport import MultiPortMemory

__all__ = ["Softmax", "SOFTMAX_ROW_OVERHEAD_CYCLES", "ROW_BUFFERS", "softmax_period_cycles"]

SCORE_BITS = 32
PROB_BITS = 8
EXP_MAX = 1 << SOFTMAX_INPUT_FRAC_BITS              # int_exp caps the polynomial at 1.0
EXP_Q_MAX = EXP_N_MAX // EXP_LN2                    # the right shift q is at most 15
DIVIDER_BITS = SOFTMAX_RECIP_BITS + 1               # holds the dividend 2**30
OUT_SHIFT = SOFTMAX_RECIP_BITS - SOFTMAX_OUTPUT_FRAC_BITS
# EXP pass: buffer read, then s1 clamped gap, s2 range-reduced argument, s3 square, s4 exp.
EXP_READ_CYCLES = 1
EXP_PIPELINE_CYCLES = 4
OUT_PIPELINE_CYCLES = 2                             # buffer read, then the output register
ROW_BUFFERS = 3                                     # one row per stage
# The first row beyond the three passes over its beats, from this unit's own stages: the
# hand-over to the exponential stage, the EXP drain, the hand-over to the output stage (which
# issues the division), the division, the OUT fill. The cycle model composes the same figure
# from the widths: sim.softmax.softmax_latency; the benches hold both to the measured cycles.
SOFTMAX_ROW_OVERHEAD_CYCLES = (1 + EXP_READ_CYCLES + EXP_PIPELINE_CYCLES + 1 + divider_cycles(DIVIDER_BITS)
                               + OUT_PIPELINE_CYCLES)


def softmax_period_cycles(beats: int) -> int:
    """Cycles between two rows' last outputs in a stream of rows of ``beats`` beats: the slowest stage's cycle.

    Load stage ``beats + 1`` (LOAD, HOLD), exponential stage ``beats + 7`` (IDLE, EXP and its
    drain, HOLD), output stage ``beats + divider_cycles(31) + 2 + 1`` (the division, OUT and
    its fill, IDLE: ``beats + 20``, always the slowest).
    """
    return max(beats + 1, 1 + beats + EXP_READ_CYCLES + EXP_PIPELINE_CYCLES + 1,
               beats + divider_cycles(DIVIDER_BITS) + OUT_PIPELINE_CYCLES + 1)


class Softmax(wiring.Component):
    """Row softmax over ``lanes`` scores per beat, three rows in flight.

    Parameters
    ----------
    lanes : int
        Scores per input beat and probabilities per output beat.
    max_length : int
        Longest row the buffer holds (``ceil(max_length / lanes)`` words of ``lanes`` INT32).

    Attributes
    ----------
    length : In(range(max_length + 1))
        Row length, sampled with the first beat of each row; must be in ``1..max_length``.
    i : In(stream.Signature(ArrayLayout(signed(32), lanes)))
        Q.12 scores, ``ceil(length / lanes)`` beats per row; lanes past ``length`` in the
        last beat are ignored. ``i.ready`` is high only while the load stage loads a row.
    o : Out(stream.Signature(StructLayout({"data": ArrayLayout(signed(8), lanes), "last": 1})))
        Q.7 probabilities in the same order, ``last`` on the row's final beat; lanes past
        ``length`` are 0.

    Timing: up to ``ROW_BUFFERS`` rows in flight, one per stage. With ``o.ready`` high and
    input offered whenever asked for, ``rows`` rows of ``b = ceil(length / lanes)`` beats take
    ``3 b + latency + (rows - 1) * period`` cycles from the first input edge to the last output
    edge inclusive: ``latency = SOFTMAX_ROW_OVERHEAD_CYCLES`` (26) for the first row and
    ``period = softmax_period_cycles(b)`` (``b + 20``, the output stage's) for each
    further one (``sim.softmax.softmax_cycles``).
    """

    def __init__(self, lanes: int = 8, max_length: int = 256):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes <= 0:
            raise IntVitError(f"Softmax lanes must be a positive integer, not {lanes!r}")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
            raise IntVitError(f"Softmax max_length must be a positive integer, not {max_length!r}")
        if max_length * EXP_MAX >= 1 << DIVIDER_BITS:
            raise IntVitError(f"Softmax max_length {max_length} is too long for a {DIVIDER_BITS}-bit row total")
        self._lanes = lanes
        self._max_length = max_length
        super().__init__({
            "length": In(range(max_length + 1)),
            "i": In(stream.Signature(data.ArrayLayout(signed(SCORE_BITS), lanes))),
            "o": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(PROB_BITS), lanes), "last": 1}))),
        })

    @property
    def lanes(self) -> int:
        """Scores per beat."""
        return self._lanes

    @property
    def max_length(self) -> int:
        """Longest row the buffer holds."""
        return self._max_length

    @property
    def latency(self) -> int:
        """The first row's cycles beyond three per beat (``SOFTMAX_ROW_OVERHEAD_CYCLES``)."""
        return SOFTMAX_ROW_OVERHEAD_CYCLES

    def period(self, length: int) -> int:
        """Cycles per further row of ``length`` scores in a stream of rows (``softmax_period_cycles``)."""
        return softmax_period_cycles(-(-length // self._lanes))

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes
        depth = -(-self._max_length // lanes)
        regions = ROW_BUFFERS * depth
        m.submodules.divider = divider = Divider(DIVIDER_BITS)
        # One region of ``depth`` words per row in flight: the load stage writes one, the
        # exponential stage reads and rewrites another, the output stage reads the third. Two
        # write ports: on an FPGA, banks and a live-value table in block and LUT RAM
        # (rtl.multiport), which Yosys would otherwise build from flip-flops and wide muxes.
        row = data.ArrayLayout(signed(SCORE_BITS), lanes)
        m.submodules.buffer = buffer = MultiPortMemory(width=row.size, depth=regions, write_ports=2,
                                                       read_ports=2, transparent=False)
        load, exp_write = buffer.write
        exp_read, out_read = buffer.read
        load_data, exp_write_data, exp_data, out_data = (row(port.data) for port in (*buffer.write, *buffer.read))
        m.d.comb += exp_read.en.eq(1)

        # Load stage: LOAD, then HOLD until the exponential stage takes the row.
        l_base = Signal(range(regions))             # first word of the region being loaded
        beats = Signal(range(depth + 1))            # beats of the row, counted while loading
        left = Signal(range(self._max_length + 1))  # scores of the row not yet loaded
        last_lanes = Signal(range(lanes + 1))        # valid lanes in the row's last beat
        first = Signal(init=1)
        row_max = Signal(signed(SCORE_BITS))
        # Exponential stage: the EXP pass, then HOLD until the output stage takes the row.
        e_base = Signal(range(regions))
        e_beats = Signal(range(depth + 1))
        e_last_lanes = Signal(range(lanes + 1))
        e_max = Signal(signed(SCORE_BITS))
        total = Signal(range(self._max_length * EXP_MAX + 1))
        e_issue = Signal(range(depth + 1))
        # Output stage: the division, then the OUT pass.
        o_base = Signal(range(regions))
        o_beats = Signal(range(depth + 1))
        recip = Signal(DIVIDER_BITS)
        o_issue = Signal(range(depth + 1))
        l_hold, e_idle, e_hold, o_idle = Signal(), Signal(), Signal(), Signal()
        to_exp = l_hold & e_idle                    # the exponential stage takes the loaded row
        to_out = e_hold & o_idle                    # the output stage takes the exponentiated row

        # LOAD: lanes past the row end become INT32_MIN, which leaves the maximum alone;
        # EXP zeroes their exponentials, so they vanish from the total and the output.
        left_now = Mux(first, self.length, left)
        loaded = [Mux(lane < left_now, self.i.payload[lane], INT32_MIN) for lane in range(lanes)]
        beat_max = loaded[0]
        for value in loaded[1:]:
            beat_max = Mux(value > beat_max, value, beat_max)

        # EXP pipeline; valid and address travel beside the data.
        s0_valid, s1_valid, s2_valid, s3_valid, s4_valid = (Signal(name=f"s{k}_valid") for k in range(5))
        s0_addr, s1_addr, s2_addr, s3_addr, s4_addr = (Signal(range(depth), name=f"s{k}_addr") for k in range(5))
        s0_last, s1_last, s2_last, s3_last, s4_last = (Signal(name=f"s{k}_last") for k in range(5))
        m.d.sync += [
            s1_valid.eq(s0_valid), s2_valid.eq(s1_valid), s3_valid.eq(s2_valid), s4_valid.eq(s3_valid),
            s1_addr.eq(s0_addr), s2_addr.eq(s1_addr), s3_addr.eq(s2_addr), s4_addr.eq(s3_addr),
            s1_last.eq(s0_last), s2_last.eq(s1_last), s3_last.eq(s2_last), s4_last.eq(s3_last),
        ]
        s4_e = []
        for lane in range(lanes):
            s1_gap = Signal(range(EXP_N_MAX + 1), name=f"s1_gap{lane}")
            s2_q = Signal(range(EXP_Q_MAX + 1), name=f"s2_q{lane}")
            s2_s = Signal(range(EXP_POLY_B + 1), name=f"s2_s{lane}")
            s3_q = Signal(range(EXP_Q_MAX + 1), name=f"s3_q{lane}")
            s3_square = Signal(range((EXP_POLY_B**2 >> SOFTMAX_INPUT_FRAC_BITS) + 1), name=f"s3_square{lane}")
            e = Signal(range(EXP_MAX + 1), name=f"s4_e{lane}")
            in_row = ~s3_last | (lane < e_last_lanes)
            gap = e_max - exp_data[lane]                          # >= 0, up to 2**32 - 1
            q = (s1_gap * EXP_DIV_MULT) >> EXP_DIV_SHIFT            # floor(gap / LN2) on the clamped range
            raw_poly = ((s3_square * EXP_POLY_A) >> EXP_POLY_A_SHIFT) + EXP_POLY_C
            poly = Mux(raw_poly > EXP_MAX, EXP_MAX, raw_poly)
            m.d.sync += [
                s1_gap.eq(Mux(gap < EXP_N_MAX, gap, EXP_N_MAX)),
                s2_q.eq(q),
                s2_s.eq(q * EXP_LN2 - s1_gap + EXP_POLY_B),         # (r + B) with r in (-LN2, 0]
                s3_q.eq(s2_q),
                s3_square.eq((s2_s * s2_s) >> SOFTMAX_INPUT_FRAC_BITS),
                e.eq(Mux(in_row, (poly + ((Const(1, 1) << s3_q) >> 1)) >> s3_q, 0)),   # rounding shift
            ]
            s4_e.append(e)
        beat_total = s4_e[0]
        for e in s4_e[1:]:
            beat_total = beat_total + e

        # OUT pipeline, held as a whole while the output is not taken.
        advance = Signal()
        s0_out_valid = Signal()
        s0_out_last = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        for lane in range(lanes):
            product = out_data[lane].as_unsigned()[:EXP_MAX.bit_length()] * recip
            rounded = (product + (1 << (OUT_SHIFT - 1))) >> OUT_SHIFT
            with m.If(advance):
                m.d.sync += self.o.payload.data[lane].eq(Mux(rounded > 127, 127, rounded))

        m.d.comb += [
            load.addr.eq(l_base + beats),
            exp_read.addr.eq(e_base + e_issue),
            exp_write.addr.eq(e_base + s4_addr),
            out_read.addr.eq(o_base + o_issue),
        ]
        m.d.comb += [load_data[lane].eq(loaded[lane]) for lane in range(lanes)]
        m.d.comb += [exp_write_data[lane].eq(s4_e[lane]) for lane in range(lanes)]
        with m.FSM(name="load_stage"):
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.comb += load.en.eq(1)
                    m.d.sync += [
                        beats.eq(beats + 1),
                        left.eq(left_now - lanes),
                        first.eq(0),
                        row_max.eq(Mux(first | (beat_max > row_max), beat_max, row_max)),
                    ]
                    with m.If(left_now <= lanes):
                        m.d.sync += last_lanes.eq(left_now)
                        m.next = "HOLD"
            with m.State("HOLD"):
                m.d.comb += l_hold.eq(1)
                with m.If(to_exp):
                    m.d.sync += [beats.eq(0), first.eq(1),
                                 l_base.eq(Mux(l_base == regions - depth, 0, l_base + depth))]
                    m.next = "LOAD"

        with m.FSM(name="exp_stage"):
            with m.State("IDLE"):
                m.d.comb += e_idle.eq(1)
                with m.If(to_exp):
                    m.d.sync += [e_base.eq(l_base), e_beats.eq(beats), e_last_lanes.eq(last_lanes),
                                 e_max.eq(row_max), e_issue.eq(0), total.eq(0)]
                    m.next = "EXP"
            with m.State("EXP"):
                with m.If(e_issue < e_beats):
                    m.d.sync += [
                        e_issue.eq(e_issue + 1), s0_valid.eq(1), s0_addr.eq(e_issue),
                        s0_last.eq(e_issue == e_beats - 1),
                    ]
                with m.Else():
                    m.d.sync += s0_valid.eq(0)
                with m.If(s4_valid):
                    m.d.comb += exp_write.en.eq(1)
                    m.d.sync += total.eq(total + beat_total)
                    with m.If(s4_last):
                        m.next = "HOLD"
            with m.State("HOLD"):
                m.d.comb += e_hold.eq(1)
                with m.If(to_out):
                    m.next = "IDLE"

        with m.FSM(name="out_stage"):
            with m.State("IDLE"):
                m.d.comb += [
                    o_idle.eq(1),
                    divider.i.valid.eq(to_out),
                    divider.i.payload.dividend.eq(1 << SOFTMAX_RECIP_BITS),
                    divider.i.payload.divisor.eq(total),
                ]
                with m.If(to_out):
                    m.d.sync += [o_base.eq(e_base), o_beats.eq(e_beats)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += divider.o.ready.eq(1)
                with m.If(divider.o.valid):
                    m.d.sync += [recip.eq(divider.o.payload.quotient), o_issue.eq(0)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += out_read.en.eq(advance)
                with m.If(advance):
                    m.d.sync += [
                        s0_out_valid.eq(o_issue < o_beats),
                        s0_out_last.eq(o_issue == o_beats - 1),
                        self.o.valid.eq(s0_out_valid),
                        self.o.payload.last.eq(s0_out_last),
                    ]
                    with m.If(o_issue < o_beats):
                        m.d.sync += o_issue.eq(o_issue + 1)
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.d.sync += [s0_out_valid.eq(0), self.o.valid.eq(0)]
                    m.next = "IDLE"
        return m
