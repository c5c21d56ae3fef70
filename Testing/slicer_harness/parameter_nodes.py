"""``slicer.parameterNodeWrapper`` for the parameter types and widgets the LDAE panel uses.

Written here from reading Slicer's ``Base/Python/slicer/parameterNodeWrapper/`` (wrapper.py,
serializers.py, guiConnectors.py, validators.py); none of it is copied. Reproduced:

* a decorated class gets one property per annotated field, stored in a ``vtkMRMLScriptedModuleNode``
  under the field's name: bool as "True"/"False", int and float as ``str(value)``, str as is, an
  MRML node as the node reference of that role (plus an empty parameter so "is set" can be told);
* defaults (the class attribute, else False / 0 / "" / None) are written for every field missing
  from the node when the wrapper is made;
* ``WithinRange`` / ``Minimum`` / ``Maximum`` / ``Choice`` reject values with ``ValueError`` (ints
  must be ints, floats may be ints);
* ``connectGui(ui)`` binds every widget of ``ui`` whose dynamic property ``SlicerParameterName``
  names a field, choosing the connector by the widget's exact class as Slicer does: QCheckBox
  (``stateChanged``), QSpinBox / QSlider (``valueChanged``, range from the validators), QDoubleSpinBox /
  ctkSliderWidget (``valueChanged``, range), QLineEdit (``textChanged``), qMRMLNodeComboBox
  (``currentNodeChanged``, ``nodeTypes`` from the annotation), QComboBox with ``Choice``. The GUI is
  written from the node at once; a widget change writes the node; every node change rewrites all
  connected widgets (the observer that does it stays after ``disconnectGui``, as in Slicer);
* ``disconnectGui(tag)``, ``getValue`` / ``setValue``, ``AddObserver`` / ``RemoveObserver`` /
  ``Modified`` / ``StartModify`` / ``EndModify`` forwarded to the node.

Not reproduced: parameterPack, lists, dicts, unions, enums, paths, caching.
"""

from __future__ import annotations

import typing

import slicer
import vtk

from . import qt_compat as qt

__all__ = ["parameterNodeWrapper", "WithinRange", "Minimum", "Maximum", "Choice", "Default"]

SlicerParameterNamePropertyName = "SlicerParameterName"


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"value {value} is not within [{self.minimum}, {self.maximum}]")


class Minimum:
    def __init__(self, minimum) -> None:
        self.minimum = minimum

    def validate(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"value {value} is below {self.minimum}")


class Maximum:
    def __init__(self, maximum) -> None:
        self.maximum = maximum

    def validate(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"value {value} is above {self.maximum}")


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"value {value!r} is not one of {self.choices}")


class Default:
    def __init__(self, value) -> None:
        self.value = value


# ---------------------------------------------------------------------- fields
class _Field:
    def __init__(self, name: str, annotation) -> None:
        self.name = name
        if typing.get_origin(annotation) is typing.Annotated:
            self.type, *self.annotations = typing.get_args(annotation)
        else:
            self.type, self.annotations = annotation, []
        self.validators = [a for a in self.annotations if hasattr(a, "validate")]
        self.is_node = isinstance(self.type, type) and issubclass(self.type, slicer.vtkMRMLNode)
        if not (self.is_node or self.type in (bool, int, float, str)):
            raise TypeError(f"the harness's parameterNodeWrapper has no serializer for {self.type}")

    def kind_default(self):
        return None if self.is_node else self.type()

    def check(self, value) -> None:
        if self.is_node:
            if value is not None and not isinstance(value, self.type):
                raise TypeError(f"{self.name}: expected {self.type.__name__}, got {type(value).__name__}")
        elif value is None:
            raise ValueError(f"{self.name} cannot be None")
        elif self.type is float and not isinstance(value, (int, float)):
            raise TypeError(f"{self.name}: expected a number, got {type(value).__name__}")
        elif self.type is not float and not isinstance(value, self.type):
            raise TypeError(f"{self.name}: expected {self.type.__name__}, got {type(value).__name__}")
        for v in self.validators:
            v.validate(value)

    def is_in(self, node) -> bool:
        return node.HasParameter(self.name)

    def write(self, node, value) -> None:
        self.check(value)
        if self.is_node:
            node.SetParameter(self.name, "")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
        elif self.type is bool:
            node.SetParameter(self.name, "True" if value else "False")
        else:
            node.SetParameter(self.name, str(value))

    def read(self, node):
        if not self.is_in(node):
            self.write(node, self.default)
        if self.is_node:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.type is bool:
            return text == "True"
        return self.type(text)


# ---------------------------------------------------------------------- GUI connectors
class _Connector:
    signal = ""

    def __init__(self, widget, field: _Field) -> None:
        self.widget, self.field, self.callback = widget, field, None

    def on_changed(self, callback) -> None:
        if self.callback is not None:
            getattr(self.widget, self.signal).disconnect(self._changed)
        self.callback = callback
        if callback is not None:
            getattr(self.widget, self.signal).connect(self._changed)

    def _changed(self, *args) -> None:
        if self.callback is not None:
            self.callback()


def _range(field):
    for a in field.annotations:
        if isinstance(a, WithinRange):
            return a.minimum, a.maximum
    lo = next((a.minimum for a in field.annotations if isinstance(a, Minimum)), None)
    hi = next((a.maximum for a in field.annotations if isinstance(a, Maximum)), None)
    return lo, hi


class _CheckBox(_Connector):
    signal = "stateChanged"

    def read(self):
        return self.widget.checked

    def write(self, value) -> None:
        self.widget.checked = value


class _Number(_Connector):
    signal = "valueChanged"

    def __init__(self, widget, field) -> None:
        super().__init__(widget, field)
        lo, hi = _range(field)
        if lo is not None:
            widget.minimum = lo
        if hi is not None:
            widget.maximum = hi

    def read(self):
        return self.widget.value

    def write(self, value) -> None:
        self.widget.value = value


class _LineEdit(_Connector):
    signal = "textChanged"

    def read(self):
        return self.widget.text

    def write(self, value) -> None:
        self.widget.text = value


class _NodeComboBox(_Connector):
    signal = "currentNodeChanged"

    def __init__(self, widget, field) -> None:
        super().__init__(widget, field)
        widget.nodeTypes = [field.type.__name__]

    def read(self):
        return self.widget.currentNode()

    def write(self, value) -> None:
        self.widget.setCurrentNode(value)


class _ComboChoice(_Connector):
    signal = "currentIndexChanged"

    def __init__(self, widget, field) -> None:
        super().__init__(widget, field)
        self.choices = next(a.choices for a in field.annotations if isinstance(a, Choice))
        widget.clear()
        for c in self.choices:
            widget.addItem(str(c))

    def read(self):
        return self.choices[self.widget.currentIndex]

    def write(self, value) -> None:
        self.widget.currentIndex = self.choices.index(value)


def _connector(widget, field: _Field) -> _Connector:
    import ctk

    kind = type(widget)
    if field.type is bool and kind is qt.QCheckBox:
        return _CheckBox(widget, field)
    if field.type is int and kind in (qt.QSpinBox, qt.QSlider):
        return _Number(widget, field)
    if field.type is float and kind in (qt.QDoubleSpinBox, ctk.ctkSliderWidget):
        if kind is ctk.ctkSliderWidget and _range(field) == (None, None):
            raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
        return _Number(widget, field)
    if field.type is str and kind is qt.QLineEdit:
        return _LineEdit(widget, field)
    if field.is_node and kind is slicer.qMRMLNodeComboBox:
        return _NodeComboBox(widget, field)
    if kind is qt.QComboBox and any(isinstance(a, Choice) for a in field.annotations):
        return _ComboChoice(widget, field)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{field.type}' to widget type '{kind}'")


# ---------------------------------------------------------------------- the wrapper
def parameterNodeWrapper(classtype=None):
    def wrap(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {}
        for name, annotation in hints.items():
            field = _Field(name, annotation)
            explicit = next((a.value for a in field.annotations if isinstance(a, Default)), None)
            field.default = getattr(cls, name) if name in vars(cls) else (explicit if explicit is not None else field.kind_default())
            fields[name] = field
            setattr(cls, name, property(lambda self, f=field: f.read(self.parameterNode),
                                        lambda self, value, f=field: f.write(self.parameterNode, value)))
        cls.allParameters = fields

        def __init__(self, parameterNode) -> None:
            self.parameterNode = parameterNode
            self._guis, self._next_tag, self._updating = {}, 0, False
            for field in fields.values():
                if not field.is_in(parameterNode):
                    field.write(parameterNode, field.default)

        def getValue(self, name):
            return fields[name].read(self.parameterNode)

        def setValue(self, name, value) -> None:
            fields[name].write(self.parameterNode, value)

        def _update_gui(self) -> None:
            if self._updating:
                return
            self._updating = True
            try:
                for mapping in list(self._guis.values()):
                    for name, connector in mapping.items():
                        connector.write(self.getValue(name))
            finally:
                self._updating = False

        def connectGui(self, gui) -> int:
            widgets = gui.findChildren(qt.QWidget) if hasattr(gui, "isWidgetType") else list(vars(gui).values())
            mapping = {}
            for widget in widgets:
                name = widget.property(SlicerParameterNamePropertyName)
                if name:
                    if name not in fields:
                        raise ValueError(f"Cannot find a param with the given name: {name}")
                    mapping[name] = _connector(widget, fields[name])
            tag, self._next_tag = self._next_tag, self._next_tag + 1
            self._guis[tag] = mapping
            for name, connector in mapping.items():
                connector.write(self.getValue(name))

                def gui_to_node(name=name, connector=connector):
                    if not self._updating:
                        self.setValue(name, connector.read())

                connector.on_changed(gui_to_node)
            self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _update_gui(self))
            return tag

        def disconnectGui(self, tag) -> None:
            for connector in self._guis.pop(tag, {}).values():
                connector.on_changed(None)

        members = dict(__init__=__init__, getValue=getValue, setValue=setValue, connectGui=connectGui, disconnectGui=disconnectGui,
                       dataType=staticmethod(lambda name: fields[name].type), default=lambda self, name: Default(fields[name].default),
                       AddObserver=lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority),
                       RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
                       Modified=lambda self: self.parameterNode.Modified(),
                       StartModify=lambda self: self.parameterNode.StartModify(),
                       EndModify=lambda self, was: self.parameterNode.EndModify(was))
        for key, value in members.items():
            setattr(cls, key, value)
        cls._is_parameter_node_wrapper = True
        return cls

    return wrap if classtype is None else wrap(classtype)
